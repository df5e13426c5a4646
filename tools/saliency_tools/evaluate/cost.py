"""What a run costs: the passes counted from the settings, and the measured time extrapolated to
100 photos (the budget: 100 photos within 15 minutes on 2 CPU cores)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .experiment import METHOD_NAMES, Results, Settings

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
