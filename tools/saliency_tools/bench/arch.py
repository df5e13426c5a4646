"""``scripts/bench.py --arch``: saliency vs plain classification for any torchvision architecture.

Each architecture: an archive of seeded random weights (built by the archive builder in a temp
dir) alone on a TorchServe as served; ours with ``saliency=false`` and with the default map,
alternated at one concurrency; then the worker's resident memory.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from saliency_tools.server import Server

from .load import Cell, rotated, run_slice, slice_requests
from .machine import loadavg, run_info
from .photos import Photo, load_photos
from .report import render_arch
from .served import contenders
from .serving import PASSIVE, batching


def memory_kib(status: str) -> dict[str, int]:
    """VmHWM (peak resident) and VmRSS (resident now), in KiB, of a /proc/PID/status text."""
    found = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS") and value.split():
            found[key] = int(value.split()[0])
    return found


def build_arch_mar(arch: str, classes: int, store: Path) -> tuple[Path, int]:
    """(archive, parameter count) of ``arch`` with seeded random weights, by build_mar.py."""
    import torchvision

    from saliency_tools import archive

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = torchvision.models.get_model(arch, weights=None, num_classes=classes)
    store.mkdir(parents=True, exist_ok=True)
    weights = store.parent / f"{arch}.pth"
    torch.save(model.state_dict(), weights)
    name = f"{arch}_bench"
    argv = ["--arch", arch, "--weights", str(weights), "--name", name]
    if archive.main([*argv, "--export-path", str(store)]) != 0:
        raise RuntimeError(f"build_mar.py could not archive {arch}")
    return store / f"{name}.mar", sum(p.numel() for p in model.parameters())


def arch_benchmark(
    arch: str, photos: list[Photo], args: argparse.Namespace, work: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    """One TorchServe (as served: OMP_WAIT_POLICY=PASSIVE) with ``arch``'s archive; its plain
    and saliency contenders alternated (the order rotates every round), then the worker's memory."""
    log(f"{arch}: building the archive")
    mar, params = build_arch_mar(arch, args.num_classes, work / "store")
    name = mar.stem
    server = Server(
        workdir=work / "server",
        model_store=mar.parent,
        models_arg=[f"{name}={mar.name}"],  # no _sampled registration: not measured
        env=dict(PASSIVE),
    )
    ours, path = contenders(photos), f"/predictions/{name}"
    pool = {"plain": replace(ours["a_ours"], path=path), "saliency": replace(ours["b"], path=path)}
    log(f"{arch}: starting TorchServe")
    server.start()
    try:
        port, key = server.ports["inference_address"], server.keys["inference"]
        warm = {
            k: run_slice(port, key, c, args.concurrency, 3 * args.concurrency)
            for k, c in pool.items()
        }
        cells = {k: Cell() for k in pool}
        for round_ in range(args.rounds):
            for name_ in rotated(list(pool), round_):
                cell = cells[name_]
                rate = cell.rate if cell.slices else warm[name_].rate
                count = slice_requests(rate, args.seconds / args.rounds, args.concurrency)
                piece = run_slice(port, key, pool[name_], args.concurrency, count)
                cell.slices.append(piece)
                log(f"{arch} round {round_ + 1}/{args.rounds} {name_:<8} {piece.rate:6.1f} req/s")
        memory: dict[str, int] = {}
        for pid in server.worker_pids(name):
            with contextlib.suppress(OSError):
                memory = memory_kib(Path(f"/proc/{pid}/status").read_text())
        described = server.describe(name)
    finally:
        server.stop()
    return {
        "arch": arch,
        "params": params,
        "cells": cells,
        "memory": memory,
        "batching": batching(described),
    }


def arch_main(args: argparse.Namespace, argv: list[str], log: Callable[[str], None]) -> int:
    """--arch: each architecture on its own server, one after the other; prints the table."""
    photos = load_photos(args.images)
    info = run_info()
    results = []
    for arch in args.arch:
        with tempfile.TemporaryDirectory(prefix="bench-arch-") as work:
            results.append(arch_benchmark(arch, photos, args, Path(work), log))
    info["load_end"] = loadavg()
    command = shlex.join([".venv/bin/python", "scripts/bench.py", *argv])
    print(render_arch(command, info, results, args.concurrency))
    return 0
