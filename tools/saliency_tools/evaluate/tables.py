"""The report's Markdown tables and the number formats they share with its prose."""

from __future__ import annotations

import torch

from saliency_tools.metrics import Interval

from .experiment import RANDOM, Results
from .summary import Summary

RHO = "\u03c1"  # Spearman's rho, in Markdown (Pillow's default font has no Greek)
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


def layer_name(block: str | None) -> str:
    return "none (trained model)" if block is None else SQUEEZENET_LAYERS.get(block, block)


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


def summary_table(summary: Summary) -> str:
    """One row per method (random last, as the floor): AUCs, gains over random, photos won, and
    the randomisation test's correlation after the classifier and after every layer."""
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
    """One row per photo, one ``deletion / insertion`` AUC cell per method."""
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
    """One row per randomisation step, one ``mean ± sd`` column per method; with more than one
    photo, a last row of what the trained maps of two different photos share."""
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
