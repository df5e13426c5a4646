"""Helpers of the robustness tests (bad input, batches, load, faults, security): the error
shape, crafted images, same-answer checks, simultaneous calls, /proc readings.

Nothing here imports the service's code: the tests judge the server from the outside, as a
client would (requests go through ``serving.post``).
"""

from __future__ import annotations

import struct
import threading
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import reference
import requests

from saliency_service.rendering import png_chunk


def error_of(response: requests.Response) -> tuple[int, str]:
    """(status, code) of one of the service's own errors, checking its shape on the way."""
    assert response.headers.get("Content-Type", "").startswith("application/json"), (
        response.status_code,
        response.text[:300],
    )
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert isinstance(body["error"]["code"], str) and body["error"]["message"].strip()
    return response.status_code, body["error"]["code"]


def png_claiming(width: int, height: int) -> bytes:
    """A few hundred bytes of well-formed PNG whose header claims width x height RGB pixels."""

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\0" * (width * 3 + 1) * 4, 9)
    signature = b"\x89PNG\r\n\x1a\n"
    return (
        signature + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", rows) + png_chunk(b"IEND", b"")
    )


def assert_same_answer(alone: dict, other: dict, levels: float = 0) -> None:
    """Two answers to the same image and options agree; ``levels``: the most an 8-bit map pixel
    may differ (0 for the same batch size; ``reference.MAX_LEVELS`` when float summation order
    differs between batch sizes, with 99% of the pixels within one level)."""
    assert set(other) == set(alone), (sorted(alone), sorted(other))
    assert other["prediction"]["index"] == alone["prediction"]["index"]
    assert [c["index"] for c in other["topk"]] == [c["index"] for c in alone["topk"]]
    assert other["crop_box"] == alone["crop_box"]
    if "target" in alone:
        assert other["target"]["index"] == alone["target"]["index"]
    if "saliency" in alone:
        assert other["saliency"]["objective"] == alone["saliency"]["objective"]
    for key in ("saliency", "heatmap", "overlay"):
        if key not in alone:
            continue
        a = reference.decode_png(alone[key]["png"]).astype(int)
        b = reference.decode_png(other[key]["png"]).astype(int)
        assert a.shape == b.shape
        # A colormap turns one gray level into up to ~3 levels of a channel ("hot" is steep).
        steep = 1 if key == "saliency" else 3
        if levels:
            reference.assert_maps_agree(a, b, 255, max_levels=steep * levels, band=steep)
        else:
            assert np.array_equal(a, b), key
    if levels == 0:
        assert {k: v for k, v in other.items() if k != "serving"} == {
            k: v for k, v in alone.items() if k != "serving"
        }


def concurrently(calls: Sequence[Callable[[], Any]]) -> list[Any]:
    """Run the calls at the same moment, one thread each (a barrier lines them up)."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], Any]) -> Any:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(run, calls))


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak resident memory) of a process, in bytes, from /proc."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    return values


def percentiles(seconds: Sequence[float]) -> dict[str, float]:
    values = np.asarray(seconds) * 1000
    return {f"p{q}": float(np.percentile(values, q)) for q in (50, 95, 99)} | {
        "max": float(values.max())
    }
