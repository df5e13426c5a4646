"""The handler's custom metrics reach TorchServe's Prometheus endpoint and move with traffic.

handler/metrics.yaml declares them (metrics_mode=prometheus exports only declared metrics);
config.properties points metrics_config at it. The metrics port needs no token.
"""

from __future__ import annotations

import re

import requests
from photos import packaged_photos
from serving import wait_for

from saliency_tools import MODEL_NAME

MODEL = f'ModelName="{MODEL_NAME}"'
SAMPLE = re.compile(r"^(?P<name>[A-Za-z_:][\w:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)$")


def scrape(server) -> dict[str, float]:
    """``{'name{labels}': value}`` from the Prometheus text format; labels sorted, no Hostname."""
    response = requests.get(f"{server.url('metrics')}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers.get("Content-Type", "").startswith("text/plain"), response.headers
    samples = {}
    for line in response.text.splitlines():
        match = SAMPLE.match(line.strip())
        if not match or line.startswith("#"):
            continue
        labels = re.findall(r'(\w+)="([^"]*)"', match["labels"] or "")
        kept = ",".join(f'{k}="{v}"' for k, v in sorted(labels) if k.lower() != "hostname")
        samples[f"{match['name']}{{{kept}}}"] = float(match["value"])
    return samples


def value(samples: dict[str, float], name: str, *labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include every one of ``labels``."""
    return sum(
        v
        for key, v in samples.items()
        if key.split("{", 1)[0] == name and all(label in key for label in labels)
    )


def stage(name: str) -> str:
    return f'Stage="{name}"'


def test_handler_metrics_move_with_traffic(server, api) -> None:
    before = scrape(server)
    good = packaged_photos()["coffee"]
    assert api.post(good).status_code == 200
    assert api.post(good, json_body=None, headers={"Content-Type": "image/png"}).status_code == 200
    bad = api.post(b"this is not an image")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_image"

    def all_three_seen() -> dict[str, float] | None:
        samples = scrape(server)
        seen = value(samples, "saliency_batch_size_sum", MODEL)
        return samples if seen - value(before, "saliency_batch_size_sum", MODEL) >= 3 else None

    # The worker prints its metrics after answering; the front end parses them a moment later.
    after = wait_for(all_three_seen, timeout=15, what="the 3 requests' metrics")

    def moved(name: str, *labels: str) -> float:
        return value(after, name, MODEL, *labels) - value(before, name, MODEL, *labels)

    # Three requests went through the handler, in one to three batches.
    assert moved("saliency_batch_size_sum") == 3
    assert 1 <= moved("saliency_batch_size_count") <= 3
    # Every batch was decoded; the two good images went through the model and were encoded.
    assert moved("saliency_stage_latency_seconds_count", stage("decode")) >= 1
    assert moved("saliency_stage_latency_seconds_count", stage("forward_backward")) >= 1
    assert moved("saliency_stage_latency_seconds_count", stage("encode")) >= 1
    for name in ("decode", "forward_backward", "encode"):
        assert moved("saliency_stage_latency_seconds_sum", stage(name)) > 0, name
    assert value(
        after, "saliency_stage_latency_seconds_bucket", MODEL, stage("decode"), 'le="+Inf"'
    ) == value(after, "saliency_stage_latency_seconds_count", MODEL, stage("decode"))
    # The bad request is counted under its error code, and nothing else was.
    assert moved("saliency_errors_total", 'ErrorCode="invalid_image"') == 1
    assert moved("saliency_errors_total") == 1


def test_frontend_metrics_for_autoscaling_are_exported(server, api) -> None:
    """The HPA's signal (deploy/): queue latency per request, from TorchServe's own counters."""
    assert api.post(packaged_photos()["chelsea"]).status_code == 200
    samples = scrape(server)
    model = f'model_name="{MODEL_NAME}"'
    assert value(samples, "ts_inference_requests_total", model) >= 1
    assert f'ts_queue_latency_microseconds{{{model},model_version="default"}}' in samples
    assert value(samples, "ts_inference_latency_microseconds", model) > 0
