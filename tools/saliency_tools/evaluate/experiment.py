"""The experiment: every method's maps of every photo, their deletion and insertion curves next to
a random map's, and the cascading randomisation of the model, batched across photos.

The batching is what keeps 100 photos within 15 minutes on 2 CPU cores (docs/benchmarks.md):
``PHOTO_CHUNK`` photos share each of the engine's passes, every method's curve steps go through
the model together, and the randomisation explains its photos together.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from saliency_service import images
from saliency_service.attribution import DEFAULT_NOISE, DEFAULT_SAMPLES, DEFAULT_STEPS
from saliency_service.attribution.sampled import Sampler
from saliency_service.attribution.smoothgrad import NoisyCopies
from saliency_service.methods import METHODS, ExplainContext, Job, explain
from saliency_service.methods.smoothgrad import SmoothGrad
from saliency_service.model import CAM_LAYER
from saliency_tools.metrics import (
    Curves,
    RandomisationStep,
    blur,
    cascading_randomisation_many,
    deletion_curves,
    insertion_curves,
)

from .photos import Photos

METHOD_NAMES = tuple(METHODS)  # the service's six, in its order
RANDOM = "random"  # the floor: a map that knows nothing
NOISY = ("smoothgrad", "smoothgrad_sq", "vargrad")  # one set of noisy copies serves all three
# Photos explained together: 8 make one gradient pass of 8 images (the vanilla jobs; each Grad-CAM
# job takes its photo's forward pass from it, attribution.passes), where SqueezeNet's passes cost
# about as little per image as at 16 on 2 CPU cores (Settings.batch_size).
PHOTO_CHUNK = 8


@dataclass(frozen=True)
class Settings:
    samples: int = DEFAULT_SAMPLES  # SmoothGrad's copies, as served
    noise: float = DEFAULT_NOISE
    steps: int = DEFAULT_STEPS  # Integrated Gradients' path points, as served
    seed: int = 0  # photo n's noise has seed + n; block k is re-initialised with seed + k
    # Every 4th of RISE's steps (896 pixels: 56 steps, not 224): 4x fewer passes, what lets 100
    # photos fit in 15 minutes. Against the full curves (chelsea, coffee, rocket; vanilla,
    # Grad-CAM, SmoothGrad, IG) the mean gains over random moved by <= 0.0025, single AUCs by
    # <= 0.004; every 3rd step: 0.0015 and 0.003, for a third more time.
    pixels_per_step: int = 896
    randomisation_photos: int = 8  # the sanity check needs a few photos, not a hundred
    # Images per pass. On 2 idle cores, per image: forward + gradient 13.1-13.5 ms at batch
    # 8-16, 16.7 ms at 32; the whole run 7.2 s per photo at 16, 8.3 s at 32.
    batch_size: int = 16


@dataclass(frozen=True)
class Results:
    photos: Photos
    labels: list[str]  # each photo's explained class: the trained model's prediction
    deletion: dict[str, Curves]  # METHOD_NAMES and RANDOM
    insertion: dict[str, Curves]
    randomisation: dict[str, list[RandomisationStep]]  # METHOD_NAMES, first photos only
    settings: Settings
    seconds: dict[str, float] = field(default_factory=dict)  # wall clock per stage


class SharedNoise(SmoothGrad):
    """SmoothGrad whose answer also carries SmoothGrad-Squared and VarGrad of the *same* noisy
    copies: the three differ in the aggregate only (methods/smoothgrad.py), so one set of passes
    gives each map the service computes for that method and seed, at a third of the cost."""

    name = "shared_noise"

    def results(
        self,
        model: torch.nn.Module,
        jobs: Sequence[Job],
        samplers: Sequence[Sampler],
        logits: torch.Tensor,
        targets: torch.Tensor,
    ) -> list[tuple[torch.Tensor, dict[str, Any]]]:
        answers = []
        for sampler in samplers:
            assert isinstance(sampler, NoisyCopies)
            others = {name: sampler.aggregate(METHODS[name].aggregate) for name in NOISY[1:]}
            answers.append((sampler.aggregate(self.aggregate), others))
        return answers


SHARED_NOISE = SharedNoise()


def context_for(model: torch.nn.Module, settings: Settings) -> ExplainContext:
    """What the service's pipeline gives the engine, for this (possibly randomised) model."""
    mean, std = torch.tensor(images.IMAGENET_MEAN), torch.tensor(images.IMAGENET_STD)
    return ExplainContext(
        chunk_size=settings.batch_size,
        black=(-mean / std).view(-1, 1, 1),
        cam_layer=model.get_submodule(CAM_LAYER),
        cam_layer_name=CAM_LAYER,
    )


def jobs_for(
    inputs: torch.Tensor, targets: torch.Tensor, settings: Settings, first: int
) -> list[Job]:
    """Per photo: one job for vanilla, Grad-CAM, the noisy three together and IG, each with the
    service's defaults but for a fixed seed (photo ``first + n`` gets ``seed + first + n``)."""
    ig = METHODS["integrated_gradients"]
    noisy = {"samples": settings.samples, "noise": settings.noise}
    jobs = []
    for n, (x, target) in enumerate(zip(inputs, targets.tolist(), strict=True)):
        plan = [
            (METHODS["vanilla"], {}),
            (METHODS["gradcam"], {}),
            (SHARED_NOISE, {**noisy, "seed": settings.seed + first + n}),
            (ig, {**ig.defaults(), "steps": settings.steps}),
        ]
        jobs += [Job(x, method, options, target, "score") for method, options in plan]
    return jobs


def explain_all(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    settings: Settings,
    first: int = 0,
) -> dict[str, torch.Tensor]:
    """Every method's maps ``(N, H, W)``, from one engine call: the single-pass methods of all
    the photos share one pass, the sampled ones chunked passes of ``batch_size`` images."""
    jobs = jobs_for(inputs, targets, settings, first)
    answers = explain(model, jobs, context_for(model, settings))
    by_photo = [answers[n : n + 4] for n in range(0, len(answers), 4)]
    maps = {
        "vanilla": [a[0].map for a in by_photo],
        "gradcam": [a[1].map for a in by_photo],
        "smoothgrad": [a[2].map for a in by_photo],
        **{name: [a[2].extra[name] for a in by_photo] for name in NOISY[1:]},
        "integrated_gradients": [a[3].map for a in by_photo],
    }
    return {name: torch.stack(maps[name]).float() for name in METHOD_NAMES}


def random_maps(count: int, size: tuple[int, int], seed: int, first: int = 0) -> torch.Tensor:
    """Uniform noise maps; photo ``first + n``'s from seed ``seed + first + n``."""
    seeds = range(seed + first, seed + first + count)
    return torch.stack(
        [torch.rand(size, generator=torch.Generator().manual_seed(s)) for s in seeds]
    )


def curves_of(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    maps: dict[str, torch.Tensor],
    targets: torch.Tensor,
    settings: Settings,
) -> tuple[dict[str, Curves], dict[str, Curves]]:
    """Deletion and insertion curves of every method's maps of the same photos, all methods in
    one call per metric so that full batches of steps go through the model."""
    names, count = list(maps), len(inputs)
    stacked = torch.cat([maps[name] for name in names])
    repeated, again = inputs.repeat(len(names), 1, 1, 1), targets.repeat(len(names))
    arguments = (settings.pixels_per_step, settings.batch_size)
    deletion = deletion_curves(model, repeated, stacked, again, *arguments)
    blurred = blur(inputs).repeat(len(names), 1, 1, 1)
    insertion = insertion_curves(model, repeated, stacked, again, *arguments, blurred=blurred)

    def split(curves: Curves) -> dict[str, Curves]:
        rows = curves.probabilities.split(count)
        return {name: Curves(curves.fractions, p) for name, p in zip(names, rows, strict=True)}

    return split(deletion), split(insertion)


def run(model: torch.nn.Module, photos: Photos, labels: list[str], settings: Settings) -> Results:
    """The experiment: maps, curves and randomisation, photo chunk after photo chunk.

    ``model`` should be laid out as served (channels_last): it is the one explained, measured
    and randomised (a copy). Progress goes to stderr.
    """
    seconds = dict.fromkeys(("maps", "curves", "randomisation"), 0.0)
    with torch.no_grad():  # each photo's predicted class, fixed from here on
        chunks = photos.inputs.split(PHOTO_CHUNK)
        targets = torch.cat([model(chunk).argmax(dim=1) for chunk in chunks])
    size = tuple(photos.inputs.shape[2:])
    deletion: dict[str, list[Curves]] = {}
    insertion: dict[str, list[Curves]] = {}
    for first in range(0, len(photos.names), PHOTO_CHUNK):
        inputs = photos.inputs[first : first + PHOTO_CHUNK]
        chosen = targets[first : first + PHOTO_CHUNK]
        started = time.perf_counter()
        maps = explain_all(model, inputs, chosen, settings, first)
        maps[RANDOM] = random_maps(len(inputs), size, settings.seed, first)
        seconds["maps"] += time.perf_counter() - started
        started = time.perf_counter()
        for store, curves in zip(
            (deletion, insertion), curves_of(model, inputs, maps, chosen, settings), strict=True
        ):
            for name, curve in curves.items():
                store.setdefault(name, []).append(curve)
        seconds["curves"] += time.perf_counter() - started
        done = min(first + PHOTO_CHUNK, len(photos.names))
        print(f"{done}/{len(photos.names)} photos: {sum(seconds.values()):.0f} s", file=sys.stderr)

    started = time.perf_counter()
    subset = slice(0, max(1, settings.randomisation_photos))
    randomisation = cascading_randomisation_many(
        model,
        lambda m: explain_all(m, photos.inputs[subset], targets[subset], settings),
        seed=settings.seed,
    )
    seconds["randomisation"] = time.perf_counter() - started
    print(f"randomisation: {seconds['randomisation']:.0f} s", file=sys.stderr)
    return Results(
        photos,
        [labels[int(t)] for t in targets],
        {name: joined(parts) for name, parts in deletion.items()},
        {name: joined(parts) for name, parts in insertion.items()},
        randomisation,
        settings,
        seconds,
    )


def joined(parts: Sequence[Curves]) -> Curves:
    """One curve set of all the photos, from the chunks' in order."""
    return Curves(parts[0].fractions, torch.cat([part.probabilities for part in parts]))
