"""Faithfulness report: how far the service's saliency maps can be trusted, measured.

For every photo, every method the service offers (vanilla, gradcam, smoothgrad, smoothgrad_sq,
vargrad, integrated_gradients, at the service's defaults) and a random map as the floor:
- deletion and insertion AUC (Petsiuk et al. 2018, RISE): the target class's probability while
  pixels are removed from the photo, or put back into a blurred copy, in the map's order; the
  mean over photos with a 95% Student-t interval, and the paired difference from the random map;
- the model-parameter randomisation test (Adebayo et al. 2018) on the first photos: the Spearman
  rank correlation between the trained model's map and the maps after re-initialising
  SqueezeNet's layers one by one, cumulatively, from the classifier down to the first convolution.
Prints the tables (Markdown) and writes a report (Markdown) and a figure (PNG).

The maps come from the service's own engine (saliency_service.methods.explain: the photos of a
chunk share every pass), the metrics and statistics from saliency_tools.metrics: the same code,
model, layout and preprocessing as the server. Weights: $SQUEEZENET_WEIGHTS, else torchvision's
file (downloaded once into .cache/). About 6 s per photo plus 1-2 minutes of randomisation on 2
otherwise idle CPU cores: 100 photos in about 12 minutes (docs/faithfulness.md, "Cost").

Usage:
    .venv/bin/python scripts/evaluate.py                 # scikit-image's photos -> docs/
    .venv/bin/python scripts/evaluate.py --images path/to/photos --out out/faithfulness
        [--samples 25] [--noise 0.15] [--steps 32] [--seed 0] [--pixels-per-step 896]
        [--randomisation-photos 8] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import io
import math
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from saliency_service import images
from saliency_service.attribution import (
    DEFAULT_NOISE,
    DEFAULT_SAMPLES,
    DEFAULT_STEPS,
)
from saliency_service.attribution.sampled import Sampler
from saliency_service.attribution.smoothgrad import NoisyCopies
from saliency_service.methods import METHODS, ExplainContext, Job, explain
from saliency_service.methods.smoothgrad import SmoothGrad
from saliency_service.model import CAM_LAYER, load_model
from saliency_tools import ROOT
from saliency_tools.metrics import (
    Curves,
    Interval,
    RandomisationStep,
    across_photos,
    blur,
    cascading_randomisation_many,
    deletion_curves,
    half_life,
    insertion_curves,
    mean_interval,
    paired_difference,
)
from saliency_tools.weights import WeightsError, resolve_weights

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
# scikit-image's natural photos of something ImageNet has a class for (free to publish):
# name -> the skimage.data function. Textures, micrographs and drawings are left out.
SKIMAGE_PHOTOS = {
    "chelsea": "chelsea",  # a tabby cat
    "coffee": "coffee",  # an espresso
    "astronaut": "astronaut",  # Eileen Collins in a space suit (no ImageNet class fits well)
    "rocket": "rocket",  # a rocket on its launch pad
    "motorcycle": "stereo_motorcycle",  # the left view of the stereo pair
    "camera": "camera",  # the cameraman with his tripod (grayscale)
    "clock": "clock",  # a wall clock, motion-blurred (grayscale)
}
METHOD_NAMES = tuple(METHODS)  # the service's six, in its order
RANDOM = "random"  # the floor: a map that knows nothing
NOISY = ("smoothgrad", "smoothgrad_sq", "vargrad")  # one set of noisy copies serves all three
SQUEEZENET_LAYERS = {  # torchvision module name -> the paper's layer name (Iandola et al. 2016)
    "classifier.1": "conv10",
    "features.12": "fire9",
    "features.11": "fire8",
    "features.10": "fire7",
    "features.9": "fire6",
    "features.7": "fire5",
    "features.6": "fire4",
    "features.4": "fire3",
    "features.3": "fire2",
    "features.0": "conv1",
}
RHO = "\u03c1"  # Spearman's rho, in Markdown (Pillow's default font has no Greek)
# Photos explained together: 8 make one gradient pass of 8 images (the vanilla jobs; each Grad-CAM
# job takes its photo's forward pass from it, attribution.passes), where SqueezeNet's passes cost
# about as little per image as at 16 on 2 CPU cores (Settings.batch_size).
PHOTO_CHUNK = 8
PASS_BELOW = 0.8  # a map whose rank correlation never falls below this ignored the weights
CLOSE = 0.15  # a randomised map this close to the cross-photo correlation kept nothing learned


# --- the experiment ------------------------------------------------------------------------------


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
class Photos:
    names: list[str]
    inputs: torch.Tensor  # (N, 3, 224, 224), preprocessed as the server does
    crops: list[Image.Image]  # what the model saw


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


def skimage_photos() -> dict[str, bytes]:
    """scikit-image's photos (SKIMAGE_PHOTOS), PNG-encoded: decoded as an upload would be."""
    from skimage import data

    encoded = {}
    for name, function in SKIMAGE_PHOTOS.items():
        pixels = getattr(data, function)()
        pixels = pixels[0] if isinstance(pixels, tuple) else pixels  # stereo: (left, right, ...)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        encoded[name] = buffer.getvalue()
    return encoded


def folder_photos(folder: Path) -> dict[str, bytes]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SystemExit(f"error: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return {path.stem: path.read_bytes() for path in files}


def prepare(encoded: dict[str, bytes]) -> Photos:
    prepared = [images.preprocess(images.decode(data)) for data in encoded.values()]
    return Photos(
        list(encoded), torch.stack([p.tensor for p in prepared]), [p.crop for p in prepared]
    )


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


def evaluate(
    model: torch.nn.Module, photos: Photos, labels: list[str], settings: Settings
) -> Results:
    """The experiment: maps, curves and randomisation, photo chunk after photo chunk.

    ``model`` should be laid out as served (channels_last): it is the one explained, measured
    and randomised (a copy).
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
    return Curves(parts[0].fractions, torch.cat([part.probabilities for part in parts]))


# --- the statistics ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sanity:
    """One method's randomisation test, in numbers (means over the photos)."""

    after_classifier: float  # rank correlation once the classifier alone is re-initialised
    all_random: float  # ... once every layer is
    lowest: float  # the lowest over the steps
    undefined: int  # randomised maps that were constant (correlation undefined, left out)
    across: float  # what the trained model's maps of two *different* photos share


@dataclass(frozen=True)
class Summary:
    count: int  # photos
    deletion: dict[str, Interval]  # METHOD_NAMES and RANDOM
    insertion: dict[str, Interval]
    deletion_gain: dict[str, Interval]  # random's AUC - the method's: > 0 is better
    insertion_gain: dict[str, Interval]  # the method's AUC - random's: > 0 is better
    deletion_wins: dict[str, int]  # photos where the method beats the random map
    insertion_wins: dict[str, int]
    half_lives: dict[str, float]  # fraction of pixels deleted when p(class) halves
    sanity: dict[str, Sanity]  # METHOD_NAMES


def nanmean(values: torch.Tensor) -> float:
    return float(values.double().nanmean())


def sanity(steps: list[RandomisationStep]) -> Sanity:
    means = [nanmean(step.correlations) for step in steps[1:]]
    finite = [m for m in means if math.isfinite(m)]
    undefined = sum(int(step.correlations.isnan().sum()) for step in steps[1:])
    return Sanity(
        means[0], means[-1], min(finite, default=math.nan), undefined, across_photos(steps[0].maps)
    )


def summarise(results: Results) -> Summary:
    """Every number the prose and the figure use: intervals, gains over random, sanity."""
    deletion = {m: c.auc for m, c in results.deletion.items()}
    insertion = {m: c.auc for m, c in results.insertion.items()}
    methods = [m for m in deletion if m != RANDOM]
    return Summary(
        count=len(results.photos.names),
        deletion={m: mean_interval(auc) for m, auc in deletion.items()},
        insertion={m: mean_interval(auc) for m, auc in insertion.items()},
        deletion_gain={m: paired_difference(deletion[RANDOM], deletion[m]) for m in methods},
        insertion_gain={m: paired_difference(insertion[m], insertion[RANDOM]) for m in methods},
        deletion_wins={m: int((deletion[m] < deletion[RANDOM]).sum()) for m in methods},
        insertion_wins={m: int((insertion[m] > insertion[RANDOM]).sum()) for m in methods},
        half_lives={m: half_life(c) for m, c in results.deletion.items()},
        sanity={m: sanity(steps) for m, steps in results.randomisation.items()},
    )


# --- the prose -----------------------------------------------------------------------------------


def mean_sd(values: torch.Tensor) -> str:
    """``mean ± sd`` of the finite values; a constant map's undefined correlation is counted."""
    values = values.double()
    finite = values[values.isfinite()]
    if len(finite) == 0:
        return "undefined (constant maps)"
    sd = float(finite.std()) if len(finite) > 1 else 0.0
    text = f"{float(finite.mean()):.3f} ± {sd:.3f}"
    missing = len(values) - len(finite)
    return text + (f" ({missing} constant map{'s' * (missing > 1)} left out)" if missing else "")


def interval_text(interval: Interval, signed: bool = False) -> str:
    """``0.284 [0.213, 0.355]``; the mean alone where one photo leaves no interval."""
    number = "{:+.3f}" if signed else "{:.3f}"
    if interval.count == 0:
        return "undefined"
    text = number.format(interval.mean)
    if not interval.defined:
        return f"{text} (one photo: no interval)"
    return f"{text} [{number.format(interval.low)}, {number.format(interval.high)}]"


def verdict(gain: Interval) -> str:
    """``beats``, ``loses`` or ``ties``: where the 95% interval of the gain over random lies."""
    if gain.excludes_zero():
        return "beats" if gain.low > 0 else "loses"
    return "ties"


def layer_name(block: str | None) -> str:
    return "none (trained model)" if block is None else SQUEEZENET_LAYERS.get(block, block)


def summary_table(summary: Summary) -> str:
    lines = [
        "| method | deletion AUC (lower is better) | gain over random, photos won "
        "| insertion AUC (higher is better) | gain over random, photos won "
        f"| randomisation: {RHO} after conv10 / all layers |",
        "|---|---|---|---|---|---|",
    ]
    n = summary.count
    for m in summary.deletion:
        if m == RANDOM:
            gains = ["(the floor)", "(the floor)"]
            check = "(independent of the model)"
        else:
            gains = [
                f"{interval_text(summary.deletion_gain[m], True)}, {summary.deletion_wins[m]}/{n}",
                f"{interval_text(summary.insertion_gain[m], True)}, "
                f"{summary.insertion_wins[m]}/{n}",
            ]
            s = summary.sanity[m]
            check = f"{s.after_classifier:.2f} / {s.all_random:.2f}"
        deletion, insertion = (interval_text(x[m]) for x in (summary.deletion, summary.insertion))
        lines.append(f"| {m} | {deletion} | {gains[0]} | {insertion} | {gains[1]} | {check} |")
    return "\n".join(lines)


def photos_table(results: Results) -> str:
    methods = list(results.deletion)
    lines = [
        "| photo (class) | " + " | ".join(methods) + " |",
        "|---" * (len(methods) + 1) + "|",
    ]
    for n, name in enumerate(results.photos.names):
        cells = [
            f"{float(results.deletion[m].auc[n]):.3f} / {float(results.insertion[m].auc[n]):.3f}"
            for m in methods
        ]
        lines.append(f"| {name} ({results.labels[n]}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def randomisation_table(results: Results, summary: Summary) -> str:
    methods = list(results.randomisation)
    lines = [
        "| randomised down to | " + " | ".join(methods) + " |",
        "|---" * (len(methods) + 1) + "|",
    ]
    for k, step in enumerate(results.randomisation[methods[0]]):
        cells = [mean_sd(results.randomisation[m][k].correlations) for m in methods]
        lines.append(f"| {layer_name(step.block)} | " + " | ".join(cells) + " |")
    if len(results.randomisation[methods[0]][0].maps) > 1:
        cells = [f"{summary.sanity[m].across:.3f}" for m in methods]
        lines.append(
            "| *reference: trained maps of two different photos* | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def listing(items: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def against_random(summary: Summary, metric: str) -> str:
    """One sentence per metric: who beats the random map, by how much, who cannot be told apart
    from it, who does worse; from the paired 95% intervals."""
    gains = summary.deletion_gain if metric == "deletion" else summary.insertion_gain
    wins = summary.deletion_wins if metric == "deletion" else summary.insertion_wins
    floor = (summary.deletion if metric == "deletion" else summary.insertion)[RANDOM].mean
    groups: dict[str, list[str]] = {"beats": [], "ties": [], "loses": []}
    for m in sorted(gains, key=lambda m: gains[m].mean, reverse=True):
        share = f", {100 * gains[m].mean / floor:+.0f}%" if floor > 0 else ""
        groups[verdict(gains[m])].append(
            f"{m} ({interval_text(gains[m], True)}{share}, {wins[m]}/{summary.count} photos)"
        )
    what = "lower" if metric == "deletion" else "higher"
    parts = []
    if groups["beats"]:
        parts.append(f"{listing(groups['beats'])} beat{'s' * (len(groups['beats']) == 1)} it")
    if groups["ties"]:
        undecided = listing(groups["ties"])
        parts.append(f"{undecided} cannot be told apart from it at this number of photos")
    if groups["loses"]:
        parts.append(f"{listing(groups['loses'])} do{'es' * (len(groups['loses']) == 1)} worse")
    return (
        f"On {metric} (gain = how much {what} the method's AUC is than the random map's "
        f"{floor:.3f}, 95% interval, share of random's AUC, photos won): {'; '.join(parts)}."
    )


def collapse(summary: Summary) -> str:
    """Whether deletion can separate the methods at all: SqueezeNet's probability may halve
    after a few percent of the pixels whatever their order."""
    lives = summary.half_lives
    halves = ", ".join(f"{100 * lives[m]:.1f}% ({m})" for m in lives)
    if max(lives.values()) >= 0.1:
        return f"The probability halves once {halves} of the pixels are deleted."
    text = f"Every deletion curve collapses early: the probability halves once {halves}"
    text += " of the pixels are deleted, whatever their order, so the deletion AUCs are small"
    spread = {
        name: max(i.mean for i in scores.values()) - min(i.mean for i in scores.values())
        for name, scores in (("deletion", summary.deletion), ("insertion", summary.insertion))
    }
    if spread["insertion"] > spread["deletion"]:
        text += ", and insertion separates the methods better"
    return text + "."


def sanity_text(method: str, s: Sanity) -> str:
    """The randomisation test of one method, in words."""
    left_out = (
        f" ({s.undefined} randomised map{'s' * (s.undefined > 1)} came out constant, the "
        "correlation undefined, and are left out)"
        if s.undefined
        else ""
    )
    if not math.isfinite(s.lowest):
        return (
            f"{method}: every randomised model gives a constant map, so the rank correlation is "
            "undefined: the map vanishes without the learned weights (it depends on them, "
            "trivially)."
        )
    verdict_text = (
        "the map depends on the learned weights"
        if s.lowest < PASS_BELOW
        else "the map barely changes: it fails the sanity check"
    )
    text = (
        f"{method}: the rank correlation with the trained model's map falls from 1 to "
        f"{s.after_classifier:.2f} when the classifier alone is re-initialised and is "
        f"{s.all_random:.2f} with every layer random (lowest {s.lowest:.2f}){left_out}: "
        f"{verdict_text}."
    )
    if math.isfinite(s.across) and s.all_random > 0.2:
        pattern = (
            "not learned structure but a fixed, image-independent pattern that the architecture "
            "imposes on every map (such as the stride-2 sampling grid and the padded border)."
        )
        if s.all_random <= s.across:
            text += (
                f" What remains is no more than the {s.across:.2f} that the trained model's maps "
                f"of two *different* photos share: {pattern}"
            )
        elif s.all_random - s.across <= CLOSE:
            text += (
                f" What remains is close to the {s.across:.2f} that the trained model's maps of "
                f"two *different* photos share: {pattern}"
            )
        else:
            text += (
                f" That is well above the {s.across:.2f} that the trained model's maps of two "
                "different photos share: part of the map survives the loss of every learned "
                "weight, so it reflects the image more than the model."
            )
    return text


def interpretation(summary: Summary) -> str:
    """What the numbers say, written from the numbers (so it stays true when they change)."""
    deletion = sorted(summary.deletion, key=lambda m: summary.deletion[m].mean)
    insertion = sorted(summary.insertion, key=lambda m: summary.insertion[m].mean, reverse=True)
    sentences = [
        f"Deletion orders the methods {' < '.join(deletion)} (lower is better), insertion "
        f"{' > '.join(insertion)} (higher is better)."
    ]
    if summary.count < 2:
        sentences.append(
            "With one photo there is no interval: the gains below are single differences."
        )
    sentences += [against_random(summary, "insertion"), against_random(summary, "deletion")]
    sentences.append(collapse(summary))
    paragraphs = [sanity_text(m, s) for m, s in summary.sanity.items()]
    return "\n\n".join([" ".join(sentences), *paragraphs])


CAVEATS = """\
How to read this. Deletion and insertion test whether the map's *order* of pixels matches what the
model needs: a map can look noisy and still rank the decisive pixels first. Both feed the model
images it never saw in training (mean-coloured holes, blur), so part of each curve is the model
reacting to the artefact rather than to lost evidence: compare the methods with each other and
with the random map, not with an absolute scale. The two artefacts likely favour different maps:
restoring whole regions into the blur (a coarse map such as Grad-CAM's) gives the model intact
local texture early, while scattered holes (a random or noisy map) damage texture everywhere at
once; so insertion flatters coarse maps, and deletion is hard to win against a random order.
The intervals are 95% Student-t intervals over the photos, each photo one observation, and the
gains over random are paired (each photo its own control); they assume the photos are a random
sample of what the service will see, which a handful of library photos is not. The randomisation
test is a necessary condition only: a map that does not change when the weights are destroyed
cannot be explaining the weights (Adebayo et al. show that an edge detector passes the eye test
this way), but a map that does change is not thereby proven right."""


# Per image, on 2 quiet CPU cores, SqueezeNet 1.1 channels_last float32 at batch 8
# (docs/benchmarks.md, "Levers, in process"): forward 38.3 ms / 8, forward + input gradient 92 / 8.
QUIET_FORWARD_S, QUIET_GRADIENT_S = 0.0048, 0.0115


@dataclass(frozen=True)
class Work:
    """Images through the model, counted from the settings: what the run costs on any machine."""

    gradients: int  # per photo, through forward and backward
    forwards: int  # per photo, through forward alone (mostly the curves)
    randomised_gradients: int  # per randomised photo, all models together
    randomised_forwards: int

    def quiet_seconds(self, photos: int, randomised: int) -> float:
        """Predicted wall clock on 2 quiet cores in bare passes (no loading, masks, sorting)."""
        gradients = photos * self.gradients + randomised * self.randomised_gradients
        forwards = photos * self.forwards + randomised * self.randomised_forwards
        return gradients * QUIET_GRADIENT_S + forwards * QUIET_FORWARD_S


def work(settings: Settings, steps: int, blocks: int) -> Work:
    """``steps``: steps per curve; ``blocks``: layers the randomisation re-initialises."""
    # The engine passes each photo once in the single pass (the vanilla job; the Grad-CAM job of
    # the class score reuses its forward pass and needs no backward, attribution.passes), once
    # through the clean forward of each sampled job (shared noise, IG) and IG's baseline.
    gradients = 1 + settings.samples + settings.steps
    forwards = 2 + 1  # the clean passes of the two sampled jobs, IG's baseline
    curves = (len(METHOD_NAMES) + 1) * 2 * (steps + 1)
    models = blocks + 1  # the trained model and one per re-initialised block
    prediction = 1  # the pass that fixes each photo's class
    return Work(gradients, prediction + forwards + curves, models * gradients, models * forwards)


def timing_text(
    results: Results, seconds: float, cpu_seconds: float, load: float, cost: Work
) -> str:
    """Measured wall clock per stage, and what it and the counted work predict for 100 photos."""
    count = len(results.photos.names)
    checked = len(results.randomisation[METHOD_NAMES[0]][0].maps)
    per_photo = (results.seconds["maps"] + results.seconds["curves"]) / count
    per_check = results.seconds["randomisation"] / checked
    loading = max(0.0, seconds - sum(results.seconds.values()))
    randomised = min(100, results.settings.randomisation_photos)  # of 100 photos
    hundred = 100 * per_photo + randomised * per_check + loading
    quiet = cost.quiet_seconds(1, 0)
    return (
        f"Measured: {seconds:.0f} s wall clock and {cpu_seconds:.0f} s of CPU time, with "
        f"{torch.get_num_threads()} threads and a load average of {load:.1f} over the last 5 "
        f"minutes on the machine's {os.cpu_count()} cores (this run included): {per_photo:.1f} s "
        f"per photo ({results.seconds['maps'] / count:.1f} s maps, "
        f"{results.seconds['curves'] / count:.1f} s curves), {per_check:.1f} s per photo "
        f"randomised ({checked} photo{'s' * (checked > 1)}) and {loading:.0f} s of loading. "
        f"At this pace 100 photos, {randomised} of them randomised, take {hundred / 60:.1f} min."
        f"\n\nCounted: per photo {cost.gradients} images through a forward and backward pass "
        f"and {cost.forwards} through a forward pass alone (mostly the curves); per randomised "
        f"photo {cost.randomised_gradients} and {cost.randomised_forwards}. In bare passes at the "
        f"per-image costs of a quiet 2-core machine (docs/benchmarks.md, batch 8: forward "
        f"{1000 * QUIET_FORWARD_S:.1f} ms, forward and input gradient "
        f"{1000 * QUIET_GRADIENT_S:.1f} ms) that is {quiet:.1f} s per photo, "
        f"{cost.quiet_seconds(0, 1):.1f} s per randomised photo and "
        f"{cost.quiet_seconds(100, randomised) / 60:.1f} min for 100 photos: a lower bound, to "
        "which the masks, the noise and the bookkeeping add."
    )


def report_markdown(
    results: Results,
    summary: Summary,
    command: str,
    seconds: float,
    cpu_seconds: float,
    load: float = math.nan,
) -> str:
    s = results.settings
    photos = ", ".join(
        f"{name} ({label})"
        for name, label in zip(results.photos.names, results.labels, strict=True)
    )
    checked = len(results.randomisation[METHOD_NAMES[0]][0].maps)
    steps = len(results.deletion[RANDOM].fractions) - 1
    blocks = len(results.randomisation[METHOD_NAMES[0]]) - 1
    cost = work(s, steps, blocks)
    return f"""# Faithfulness of the saliency maps

Generated by `{command}` on the CPU ({seconds / 60:.1f} min; see "Cost" below).

- Model: SqueezeNet 1.1 with the ImageNet weights the service packs (`$SQUEEZENET_WEIGHTS`,
  else torchvision's file), as served (channels_last, float32).
- Photos ({summary.count}; explained class: the model's prediction): {photos}.
- Methods, through the service's engine at its defaults: vanilla; gradcam (layer {CAM_LAYER});
  smoothgrad, smoothgrad_sq and vargrad from the same {s.samples} noisy copies, noise {s.noise}
  of the input range, photo n's seed {s.seed} + n; integrated_gradients with {s.steps}
  Gauss-Legendre points from the zero baseline. Random baseline: uniform noise maps.
- Deletion and insertion (Petsiuk et al. 2018, RISE): {s.pixels_per_step} pixels per step
  ({steps} steps) on the 224 x 224 input; deleted pixels take the ImageNet mean colour;
  insertion starts from a Gaussian blur (kernel 11, sigma 5). AUC of the explained class's
  softmax probability over the fraction of pixels moved.
- Randomisation (Adebayo et al. 2018), on the first {checked} photo{"s" * (checked > 1)}:
  SqueezeNet's layers re-initialised cumulatively from the classifier (conv10) down to conv1, as
  for training (He-initialised weights, zero biases); Spearman rank correlation between each map
  and the trained model's map, for the same input, the same class and the same noise seed.

## Summary

Mean over the photos with its 95% Student-t interval; gain over random = the paired mean of
(random's deletion AUC - the method's) or (the method's insertion AUC - random's), positive
when the method is better, and the photos on which the method beat the random map.

{summary_table(summary)}

## What it means

{interpretation(summary)}

{CAVEATS}

![Deletion and insertion curves, gains over random, randomised maps](faithfulness.png)

## Per photo

Deletion / insertion AUC:

{photos_table(results)}

## Model-parameter randomisation

Spearman {RHO} with the trained model's map, mean ± sd over {checked} photo{"s" * (checked > 1)}:

{randomisation_table(results, summary)}

## Cost

{timing_text(results, seconds, cpu_seconds, load, cost)}
"""


# --- the figure, drawn with Pillow ---------------------------------------------------------------

COLOURS = {  # matplotlib's tab10, random in grey
    "vanilla": (31, 119, 180),
    "gradcam": (255, 127, 14),
    "smoothgrad": (214, 39, 40),
    "smoothgrad_sq": (148, 103, 189),
    "vargrad": (140, 86, 75),
    "integrated_gradients": (44, 160, 44),
    RANDOM: (140, 140, 140),
}
INK, MUTED, GRID, WHITE = (0, 0, 0), (90, 90, 90), (225, 225, 225), (255, 255, 255)


def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a small fixed bitmap font
        return ImageFont.load_default()


def centred(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, face, fill=INK) -> None:
    width = draw.textlength(text, font=face)
    draw.text((xy[0] - width / 2, xy[1]), text, font=face, fill=fill)


def colour(name: str) -> tuple[int, int, int]:
    return COLOURS.get(name, INK)


def legend(names: Sequence[str], width: int) -> Image.Image:
    image = Image.new("RGB", (width, 26), WHITE)
    draw = ImageDraw.Draw(image)
    face, x = font(14), 8.0
    for name in names:
        draw.line([(x, 13), (x + 24, 13)], fill=colour(name), width=3)
        draw.text((x + 30, 5), name, font=face, fill=INK)
        x += 30 + draw.textlength(name, font=face) + 22
    return image


def chart(title: str, xlabel: str, curves: dict[str, Curves]) -> Image.Image:
    """Mean probability curves over the photos, one line per method, on [0, 1] x [0, 1]."""
    width, height = 560, 330
    left, right, top, bottom = 58, width - 14, 36, height - 50
    image = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(image)
    small, normal = font(13), font(15)

    def at(x: float, y: float) -> tuple[float, float]:
        return left + x * (right - left), bottom - y * (bottom - top)

    for tick in np.linspace(0, 1, 5):
        draw.line([at(tick, 0), at(tick, 1)], fill=GRID)
        draw.line([at(0, tick), at(1, tick)], fill=GRID)
        centred(draw, (at(tick, 0)[0], bottom + 5), f"{tick:g}", small, MUTED)
        label = f"{tick:g}"
        draw.text((left - 8 - draw.textlength(label, font=small), at(0, tick)[1] - 7), label,
                  font=small, fill=MUTED)  # fmt: skip
    draw.rectangle([left, top, right, bottom], outline=MUTED)
    centred(draw, (width / 2, 8), title, normal)
    centred(draw, (width / 2, height - 24), xlabel, small, MUTED)
    draw.text((6, top - 20), "p(class)", font=small, fill=MUTED)
    for name, curve in curves.items():
        mean = curve.probabilities.mean(dim=0)
        points = [at(float(x), float(y)) for x, y in zip(curve.fractions, mean, strict=True)]
        draw.line(points, fill=colour(name), width=2, joint="curve")
    return image


def gains_chart(title: str, gains: dict[str, Interval]) -> Image.Image:
    """Each method's gain over the random map: the mean and its 95% interval, 0 marked."""
    width, row = 560, 26
    left, right, top = 170, width - 20, 34
    height = top + row * len(gains) + 34
    image = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(image)
    small, normal = font(13), font(15)
    ends = [v for g in gains.values() for v in (g.mean, g.low, g.high) if math.isfinite(v)]
    reach = max([abs(v) for v in ends] + [1e-3]) * 1.1
    span = 10 ** math.floor(math.log10(reach))
    reach = math.ceil(reach / span) * span  # round axis ends

    def x_at(value: float) -> float:
        return left + (value + reach) / (2 * reach) * (right - left)

    bottom = top + row * len(gains)
    for tick in (-reach, -reach / 2, 0.0, reach / 2, reach):
        draw.line([(x_at(tick), top), (x_at(tick), bottom)], fill=MUTED if tick == 0 else GRID)
        centred(draw, (x_at(tick), bottom + 4), f"{tick:+.3g}" if tick else "0", small, MUTED)
    centred(draw, (width / 2, 8), title, normal)
    centred(draw, ((x_at(0) + right) / 2, bottom + 18), "better than random ->", small, MUTED)
    for k, (name, gain) in enumerate(gains.items()):
        y = top + row * k + row / 2
        draw.text((8, y - 8), name, font=small, fill=colour(name))
        if gain.defined:
            draw.line([(x_at(gain.low), y), (x_at(gain.high), y)], fill=colour(name), width=2)
            for end in (gain.low, gain.high):
                draw.line([(x_at(end), y - 5), (x_at(end), y + 5)], fill=colour(name), width=2)
        if math.isfinite(gain.mean):
            x = x_at(gain.mean)
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour(name))
    return image


def map_tile(saliency: torch.Tensor, size: int) -> Image.Image:
    """Grayscale map, capped at its 99th percentile as Smilkov et al. visualise (section 4.1)."""
    cap = float(torch.quantile(saliency.flatten().float(), 0.99))
    scaled = (saliency.float() / cap).clamp(0, 1) if cap > 0 else torch.zeros_like(saliency)
    pixels = (scaled * 255).round().to(torch.uint8).numpy()
    return Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR)


def randomisation_grid(results: Results, photo: int, tile: int = 80) -> Image.Image:
    """One row per method: the photo, its map, then the maps as layers are randomised."""
    gap, label_width, header, caption = 4, 150, 34, 18
    methods = list(results.randomisation)
    steps = results.randomisation[methods[0]]
    width = label_width + (1 + len(steps)) * (tile + gap)
    height = header + len(methods) * (tile + caption + gap) + 4
    image = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(image)
    small = font(12)
    x0 = label_width
    centred(draw, (x0 + tile / 2, 4), "photo", small)
    for k, step in enumerate(steps):
        x = x0 + (k + 1) * (tile + gap) + tile / 2
        centred(draw, (x, 4), "trained" if step.block is None else layer_name(step.block), small)
        centred(draw, (x, 18), "" if step.block is None else "+ above", small, MUTED)
    crop = results.photos.crops[photo].resize((tile, tile), Image.Resampling.BILINEAR)
    for row, method in enumerate(methods):
        y = header + row * (tile + caption + gap)
        draw.text((6, y + tile / 2 - 8), method, font=font(13), fill=colour(method))
        image.paste(crop, (x0, y))
        for k, step in enumerate(results.randomisation[method]):
            x = x0 + (k + 1) * (tile + gap)
            image.paste(map_tile(step.maps[photo], tile), (x, y))
            rho = float(step.correlations[photo])
            text = f"rho {rho:.2f}" if math.isfinite(rho) else "constant"
            centred(draw, (x + tile / 2, y + tile + 2), text, small, MUTED)
    return image


def figure(results: Results, summary: Summary) -> Image.Image:
    count = summary.count
    mean_of = f"mean of {count} photo{'s' * (count > 1)}"
    panels = [
        [
            chart(
                f"Deletion: most salient pixels removed first ({mean_of})",
                "fraction of pixels removed",
                results.deletion,
            ),
            chart(
                f"Insertion: most salient pixels restored first ({mean_of})",
                "fraction of pixels restored",
                results.insertion,
            ),
        ],
        [
            gains_chart("Deletion AUC: random's - the method's (95% CI)", summary.deletion_gain),
            gains_chart("Insertion AUC: the method's - random's (95% CI)", summary.insertion_gain),
        ],
    ]
    grid = randomisation_grid(results, photo=0)
    title = (
        f"Cascading randomisation ({results.photos.names[0]}, class '{results.labels[0]}'): "
        "layers re-initialised from the classifier down; rho = Spearman correlation with the "
        "trained model's map"
    )
    margin = 12
    width = max(sum(p.width for p in panels[0]), grid.width) + 2 * margin
    top = legend(list(results.deletion), width - 2 * margin)
    height = (
        margin + top.height + sum(row[0].height + 8 for row in panels) + 28 + grid.height + margin
    )
    canvas = Image.new("RGB", (width, height), WHITE)
    canvas.paste(top, (margin, margin))
    y = margin + top.height
    for row in panels:
        x = margin
        for panel in row:
            canvas.paste(panel, (x, y))
            x += panel.width
        y += row[0].height + 8
    ImageDraw.Draw(canvas).text((margin + 6, y + 4), title, font=font(14), fill=INK)
    canvas.paste(grid, (margin, y + 28))
    return canvas


# --- the command line ----------------------------------------------------------------------------


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    defaults = Settings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, help="a folder of photos (default: scikit-image's)")
    parser.add_argument("--out", type=Path, help="default: docs/ (out/faithfulness with --images)")
    parser.add_argument("--samples", type=int, default=defaults.samples, help="SmoothGrad copies")
    parser.add_argument("--noise", type=float, default=defaults.noise)
    parser.add_argument("--steps", type=int, default=defaults.steps, help="IG path points")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--pixels-per-step", type=int, default=defaults.pixels_per_step)
    parser.add_argument(
        "--randomisation-photos",
        type=int,
        default=defaults.randomisation_photos,
        help="photos (the first ones) the randomisation test runs on",
    )
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    known = asdict(Settings())
    return Settings(**{name: getattr(args, name) for name in known})


HAND_WRITTEN = "<!-- Written by hand"  # where the part that this script does not write begins


def write_report(path: Path, report: str) -> None:
    """Write the report, keeping what follows the ``HAND_WRITTEN`` marker of the file there."""
    kept = ""
    if path.is_file():
        text = path.read_text("utf-8")
        start = text.find(HAND_WRITTEN)
        kept = "\n" + text[start:] if start >= 0 else ""
    path.write_text(report.rstrip("\n") + "\n" + kept, "utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(argv)
    out = args.out or (ROOT / "out" / "faithfulness" if args.images else ROOT / "docs")
    started, cpu_started = time.perf_counter(), time.process_time()
    try:
        weights = resolve_weights(ROOT / ".cache")
    except WeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    from saliency_service.labels import torchvision_categories

    # As served: channels_last (~40% less CPU time per pass), frozen, eval mode.
    model = load_model(weights).to(memory_format=torch.channels_last)
    photos = prepare(folder_photos(args.images) if args.images else skimage_photos())
    results = evaluate(model, photos, torchvision_categories(), settings_from(args))
    summary = summarise(results)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    load = os.getloadavg()[1]  # the last 5 minutes: how much of the CPUs the run had

    print(summary_table(summary), end="\n\n")
    print(randomisation_table(results, summary), end="\n\n")
    print(interpretation(summary))
    arguments = sys.argv[1:] if argv is None else list(argv)
    command = shlex.join(["python", "scripts/evaluate.py", *arguments])
    out.mkdir(parents=True, exist_ok=True)
    report = report_markdown(results, summary, command, seconds, cpu_seconds, load)
    write_report(out / "faithfulness.md", report)
    figure(results, summary).save(out / "faithfulness.png", optimize=True)
    print(f"\nwrote {out / 'faithfulness.md'} and {out / 'faithfulness.png'} ({seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
