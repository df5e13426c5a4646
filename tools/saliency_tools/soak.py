"""Soak: every method, bad input and bombs for a long time; no restart, flat memory.

    python scripts/soak.py [--minutes 30] [--clients 6]

A run by hand, not in CI. Starts TorchServe from the built archive with the production config on
free ports (both registrations), then ``--clients`` threads send a random mix until the time is
up: each explanation method with random options (through the interactive model, expensive ones
following its redirect), classification only, malformed bodies and options, and decompression
bombs in every container format. Every ``--every`` seconds it records the worker PIDs and their
resident memory. It fails (exit 1) on a restarted worker, a 5xx (but 503 with Retry-After for
an expensive request that did not fit in a batch), a timeout, an unexpected status,
or worker memory whose peak in the last third of the run is more than ``--max-growth`` MiB
above its peak in the middle third (the first third is warm-up).
"""

from __future__ import annotations

import argparse
import io
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from saliency_tools import MAR, bombs
from saliency_tools.client import ServiceError, post_image
from saliency_tools.server import Server

METHODS = {
    "vanilla": lambda r: {},
    "gradcam": lambda r: {},
    "smoothgrad": lambda r: {"samples": r.randint(2, 50)},
    "smoothgrad_sq": lambda r: {"samples": r.randint(2, 30)},
    "vargrad": lambda r: {"samples": r.randint(2, 30)},
    "integrated_gradients": lambda r: {"steps": r.randint(4, 64)},
}
BAD_OPTIONS = [
    {"topk": 0},
    {"method": "occlusion"},
    {"method": "gradcam", "samples": 3},
    {"target": "9" * 4000},
    {"clip": 10},
    {"colormap": "rainbow"},
]


def photos() -> list[bytes]:
    from PIL import Image
    from skimage import data

    pictures = []
    for array in (data.chelsea(), data.coffee(), data.astronaut()):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, "JPEG", quality=90)
        pictures.append(buffer.getvalue())
    return pictures


def memory_trend(
    samples: list[tuple[float, dict[int, float]]], pid: int, seconds: float
) -> tuple[float, float, float]:
    """(growth, peak of the middle third, peak of the last third) of a worker's RSS in MiB.

    The first third is warm-up: the allocator's high-water mark follows the largest batch seen
    so far (up to max_batch_passes images), which takes a while to occur. A leak keeps growing
    after that; a plateau does not.
    """

    def peak(low: float, high: float) -> float:
        values = [memory[pid] for at, memory in samples if low <= at < high and pid in memory]
        return max(values, default=0.0)

    middle, last = peak(seconds / 3, 2 * seconds / 3), peak(2 * seconds / 3, float("inf"))
    return (last - middle if middle else 0.0), middle, last


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Soak:
    def __init__(self, server: Server, seconds: float, seed: int) -> None:
        self.server, self.deadline, self.seed = server, time.monotonic() + seconds, seed
        self.outcomes: Counter = Counter()  # (kind, status or code) -> count
        self.problems: list[str] = []
        self.lock = threading.Lock()
        self.photos = photos()
        self.bombs = [(name, data) for name, (data, code) in bombs.bombs().items() if code]

    def request(self, rng: random.Random) -> None:
        roll = rng.random()
        if roll < 0.70:
            method = rng.choice(list(METHODS))
            options = {"method": method, **METHODS[method](rng)}
            options["colormap"] = rng.choice(["gray", "hot", "inferno", "viridis"])
            options["overlay"] = rng.random() < 0.3
            if rng.random() < 0.3:
                options["target"] = rng.randrange(1000)
            # A batch holds at most max_batch_passes images through the network: expensive
            # requests beyond it are refused 503 with Retry-After, and honoured below.
            expected = {200} if method in ("vanilla", "gradcam") else {200, 503}
            kind, image = method, rng.choice(self.photos)
        elif roll < 0.78:
            kind, image, expected = "plain", rng.choice(self.photos), {200}
            options = {"saliency": False}
        elif roll < 0.90:
            kind, image, expected = "bad option", rng.choice(self.photos), {400}
            options = rng.choice(BAD_OPTIONS)
        elif roll < 0.95:
            kind, options, expected = "bad image", {}, {400}
            image = rng.choice([b"not an image", self.photos[0][:500], b"\x89PNG\r\n\x1a\n"])
        else:
            name, image = rng.choice(self.bombs)
            kind, options, expected = f"bomb: {name}", {}, {413, 400}
        url, token = self.server.url("inference"), self.server.keys["inference"]
        retry_after = None
        try:
            post_image(image, options, url, token, timeout=120)
            status = 200
        except ServiceError as error:
            status, retry_after = error.status or error.code, error.retry_after
        with self.lock:
            self.outcomes[(kind, status)] += 1
            if status not in expected:
                self.problems.append(f"{kind} {options!r:.80}: got {status}")
            elif status == 503 and not retry_after:
                self.problems.append(f"{kind}: 503 without Retry-After")
        if retry_after:
            time.sleep(retry_after)

    def client(self, number: int) -> None:
        rng = random.Random(self.seed * 1000 + number)
        while time.monotonic() < self.deadline:
            self.request(rng)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--every", type=float, default=30, help="seconds between memory samples")
    parser.add_argument("--max-growth", type=float, default=50, help="MiB per worker (50)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not MAR.is_file():
        print(f"error: {MAR} is missing: run scripts/setup.sh first", file=sys.stderr)
        return 1
    seconds = args.minutes * 60
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        server = Server(Path(tmp), MAR.parent).start()
        try:
            first = server.worker_pids(None)
            soak = Soak(server, seconds, args.seed)
            threads = [
                threading.Thread(target=soak.client, args=(n,), daemon=True)
                for n in range(args.clients)
            ]
            for thread in threads:
                thread.start()
            samples: list[tuple[float, dict[int, float]]] = []
            start = time.monotonic()
            while any(thread.is_alive() for thread in threads):
                pids = server.worker_pids(None)
                if pids != first:
                    soak.problems.append(f"workers restarted: {first} -> {pids}")
                    first = pids
                memory = {pid: rss_mib(pid) for pid in pids}
                samples.append((time.monotonic() - start, memory))
                print(
                    f"[{samples[-1][0] / 60:5.1f} min] {sum(soak.outcomes.values())} requests;"
                    f" worker RSS MiB {', '.join(f'{m:.0f}' for m in memory.values())}",
                    flush=True,
                )
                time.sleep(args.every)
            for thread in threads:
                thread.join()
        finally:
            server.stop()
    print("\noutcomes (kind, status): count")
    for (kind, status), count in sorted(soak.outcomes.items(), key=str):
        print(f"  {kind:32} {status!s:>5}: {count}")
    for pid in samples[-1][1]:
        growth, middle, last = memory_trend(samples, pid, seconds)
        print(
            f"worker {pid}: peak RSS {middle:.0f} MiB in the middle third of the run, "
            f"{last:.0f} MiB in the last, growth {growth:+.0f} MiB"
        )
        if growth > args.max_growth:
            soak.problems.append(f"worker {pid} grew by {growth:.0f} MiB")
    for problem in soak.problems[:20]:
        print(f"PROBLEM: {problem}")
    print("soak " + ("failed" if soak.problems else "passed"))
    return 1 if soak.problems else 0


if __name__ == "__main__":
    sys.exit(main())
