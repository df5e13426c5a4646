"""Benchmark squeezenet_saliency against the stock TorchServe paths, end to end and in process.

    .venv/bin/python scripts/bench.py [--quick] [--images DIR] [--output docs/benchmarks.md]
    .venv/bin/python scripts/bench.py --arch resnet50 [ARCH ...] [--concurrency 8] [--seconds 20]

One run, one TorchServe (the production config.properties on free ports) serving two models with
the same batch settings (batchSize 8, maxBatchDelay 20 ms, 1 worker): ``squeezenet_stock``,
TorchServe's stock ``image_classifier`` handler with the same SqueezeNet 1.1 weights (archived
here in a temp dir; it imports captum), and ``squeezenet_saliency``, built from the working tree.
Their contenders alternate round-robin at concurrency 1, 8 and 32 (``served``). Then, in process
(server stopped): the pipeline's own stage timings at batch 1, 8 and 32, the ratio forward +
input gradient / forward alone at batch 8, its operators, and the optimisation levers.

``--arch``: for each torchvision architecture, an archive of random weights alone on a
TorchServe; saliency vs ``saliency=false`` at one concurrency, and the worker's memory (``arch``).

The results are printed as Markdown and written between the markers of --output; the text
around the markers is kept. The load generator runs on the same cores as the server.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from saliency_service.labels import Labels, torchvision_categories
from saliency_service.model import load_model
from saliency_service.pipeline import SaliencyService
from saliency_tools import ROOT
from saliency_tools.weights import WeightsError, resolve_weights

from .arch import arch_main
from .inprocess import gradient_ratio, op_profile, photo_batch, stage_breakdown
from .levers import levers
from .machine import loadavg, run_info
from .modes import BATCHES, FULL, QUICK, Mode, add_run_arguments
from .photos import Photo, load_photos
from .report import command_line, render, write_between_markers
from .served import end_to_end
from .serving import clear_openmp

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
HEADING = "## Results"  # when --output has no markers yet


def in_process(
    weights: Path, photos: list[Photo], mode: Mode, log: Callable[[str], None]
) -> dict[str, Any]:
    """The in-process half: stage breakdown, gradient ratio and its operators, levers."""
    log("in process: stage breakdown")
    service = SaliencyService(load_model(weights), Labels(torchvision_categories()))
    service.warm_up()
    stages = stage_breakdown(service, photos, BATCHES, mode.repeats)
    log("in process: forward + gradient / forward at batch 8, and its operators")
    x8 = photo_batch(photos, 8)
    ratio = gradient_ratio(service.model, x8, mode.repeats * 3)
    ratio["profile"] = op_profile(service.model, x8, mode.repeats)
    lever_rows = levers(service, photos, mode.repeats, mode.compile, log)
    return {"stages": stages, "ratio": ratio, "levers": lever_rows}


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser, "end-to-end")
    parser.add_argument(
        "--compile",
        dest="compile_",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile lever (default: full mode only)",
    )
    parser.add_argument(
        "--server-levers",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="extra servers: OpenMP, workers, batching (default: full mode only)",
    )
    parser.add_argument("--note", default="", help="a remark printed with the results")
    arch = parser.add_argument_group(
        "any architecture", "--arch: saliency vs saliency=false for archives of random weights"
    )
    arch.add_argument("--arch", nargs="+", help="torchvision.models builders, e.g. resnet50")
    arch.add_argument("--num-classes", type=int, default=1000)
    arch.add_argument("--concurrency", type=int, default=8)
    arch.add_argument("--seconds", type=float, default=20.0, help="per contender, about")
    arch.add_argument("--rounds", type=int, default=4, help="alternated slices per contender")
    return parser


def chosen_mode(args: argparse.Namespace) -> Mode:
    """--quick or the full run, with --compile and --server-levers overriding theirs."""
    mode = QUICK if args.quick else FULL
    if args.compile_ is not None:
        mode = replace(mode, compile=args.compile_)
    if args.server_levers is not None:
        mode = replace(mode, server_levers=args.server_levers)
    return mode


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    mode = chosen_mode(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # finally blocks stop TorchServe
    clear_openmp()
    if args.arch:
        return arch_main(args, argv, log)
    try:
        weights = resolve_weights(ROOT / ".cache")
    except WeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    photos = load_photos(args.images)
    info = run_info(
        photos=[f"{p.name} {p.size[0]}x{p.size[1]} ({len(p.data) // 1024} KiB)" for p in photos]
    )
    started = time.monotonic()
    served = process = None
    if not args.no_server:
        with tempfile.TemporaryDirectory(prefix="bench-") as work:
            served = end_to_end(photos, weights, mode, Path(work), log)
    if not args.no_inprocess:
        process = in_process(weights, photos, mode, log)
    info["load_end"] = loadavg()
    block = render(command_line("scripts/bench.py", argv), mode, info, served, process, args.note)
    block += f"\nTotal run time: {(time.monotonic() - started) / 60:.1f} min.\n"
    print(block)
    if not args.no_write:
        write_between_markers(args.output, block + "\n", BEGIN, END, HEADING)
        log(f"wrote {args.output}")
    return 0
