"""Cost isolation under load: a lone cheap request while many clients send expensive ones.

    python scripts/load_isolation.py [--clients 16] [--samples 50] [--seconds 90]

Starts TorchServe twice from the built archive, one after the other, each with the production
config on free ports: "one queue" (the archive registered once with routing off, as before the
sampled registration existed) and "routed" (the production config: expensive requests are
redirected to squeezenet_saliency_sampled). In each, ``--clients`` threads post SmoothGrad
requests of ``--samples`` copies back to back, while one probe posts a default (vanilla) request
every ``--interval`` seconds. Printed per setup: the probe's latency percentiles, and what became
of the expensive requests (answered, refused with which status, timed out).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from saliency_tools import MAR, MODEL_NAME
from saliency_tools.archive import variant_archive
from saliency_tools.client import ServiceError, post_image
from saliency_tools.server import Server

ONE_QUEUE = f"load_models={MODEL_NAME}={MODEL_NAME}.mar"


@dataclass
class Outcomes:
    """What one kind of request got: latencies of the answered ones, and the failures by code."""

    seconds: list[float] = field(default_factory=list)
    failures: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, started: float, error: ServiceError | None) -> None:
        with self.lock:
            if error is None:
                self.seconds.append(time.perf_counter() - started)
            else:
                self.failures[f"{error.status or ''} {error.code}".strip()] += 1

    def summary(self) -> str:
        answered = sorted(self.seconds)
        if not answered:
            return f"0 answered; failures {dict(self.failures) or 'none'}"
        p50 = statistics.median(answered)
        p95 = answered[min(len(answered) - 1, round(0.95 * (len(answered) - 1)))]
        return (
            f"{len(answered)} answered: p50 {p50:.2f} s, p95 {p95:.2f} s, max {answered[-1]:.2f} s;"
            f" failures {dict(self.failures) or 'none'}"
        )


def photo() -> bytes:
    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def run(server: Server, args: argparse.Namespace, image: bytes) -> tuple[Outcomes, Outcomes]:
    url, token = server.url("inference"), server.keys["inference"]
    expensive, probe = Outcomes(), Outcomes()
    stop = threading.Event()
    options = {"method": "smoothgrad", "samples": args.samples}

    def send(outcomes: Outcomes, request_options: dict) -> None:
        started = time.perf_counter()
        try:
            post_image(image, request_options, url, token, timeout=args.timeout)
            outcomes.record(started, None)
        except ServiceError as error:
            outcomes.record(started, error)
            if error.retry_after:  # a well-behaved client comes back when told to
                stop.wait(error.retry_after)

    def heavy_client() -> None:
        while not stop.is_set():
            send(expensive, options)

    clients = [threading.Thread(target=heavy_client, daemon=True) for _ in range(args.clients)]
    for client in clients:
        client.start()
    time.sleep(args.warmup)  # the queues fill first
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        send(probe, {})
        time.sleep(args.interval)
    stop.set()
    for client in clients:
        client.join(args.timeout + 5)
    return probe, expensive


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16, help="expensive clients (16)")
    parser.add_argument("--samples", type=int, default=50, help="SmoothGrad copies (50)")
    parser.add_argument("--seconds", type=float, default=90, help="probing time per setup (90)")
    parser.add_argument("--warmup", type=float, default=15, help="load before probing (15 s)")
    parser.add_argument("--interval", type=float, default=0.5, help="between probes (0.5 s)")
    parser.add_argument("--timeout", type=float, default=120, help="client timeout (120 s)")
    parser.add_argument("--setups", default="one-queue,routed", help="which, comma-separated")
    args = parser.parse_args()
    if not MAR.is_file():
        print(f"error: {MAR} is missing: run scripts/setup.sh first", file=sys.stderr)
        return 1
    image = photo()
    results = {}
    with tempfile.TemporaryDirectory(prefix="load-isolation-") as tmp:
        for setup in args.setups.split(","):
            store = Path(tmp) / setup / "store"
            store.mkdir(parents=True)
            if setup == "one-queue":
                variant_archive(store, sampled_model='""')  # routing off
                extra = ONE_QUEUE
            elif setup == "routed":
                (store / MAR.name).symlink_to(MAR)
                extra = ""
            else:
                parser.error(f"unknown setup {setup!r}")
            server = Server(Path(tmp) / setup / "server", store, extra_config=extra)
            server.start()
            try:
                print(f"[{setup}] {args.clients} clients x smoothgrad samples={args.samples} ...")
                results[setup] = run(server, args, image)
            finally:
                server.stop()
            probe, expensive = results[setup]
            print(f"[{setup}] lone vanilla:   {probe.summary()}")
            print(f"[{setup}] smoothgrad-{args.samples}: {expensive.summary()}")
    if len(results) == 2:
        before, after = (results[s][0].seconds for s in ("one-queue", "routed"))
        if before and after:
            ratio = statistics.median(before) / statistics.median(after)
            print(f"lone vanilla p50, one queue / routed: {ratio:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
