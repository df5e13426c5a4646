"""The command line of scripts/evaluate.py: run the experiment, print its tables and reading,
write the report and the figure."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

import saliency_tools.evaluate
from saliency_service.model import load_model
from saliency_tools import ROOT
from saliency_tools.weights import WeightsError, resolve_weights

from .charts import figure
from .experiment import Settings, run
from .interpretation import interpretation
from .photos import folder_photos, prepare, skimage_photos
from .report import report_markdown, write_report
from .summary import summarise
from .tables import randomisation_table, summary_table


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    defaults = Settings()
    description = saliency_tools.evaluate.__doc__.splitlines()[0]
    parser = argparse.ArgumentParser(description=description)
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
    results = run(model, photos, torchvision_categories(), settings_from(args))
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
