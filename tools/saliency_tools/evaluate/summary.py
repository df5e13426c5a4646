"""Every number the report's prose, tables and figure state, from the experiment's results:
means with their intervals, paired gains over the random map, and the randomisation test."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from saliency_tools.metrics import (
    Interval,
    RandomisationStep,
    across_photos,
    half_life,
    mean_interval,
    paired_difference,
)

from .experiment import RANDOM, Results


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
    """The test in numbers; a step whose maps were all constant has an undefined (NaN) mean."""
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
