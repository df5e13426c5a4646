#!/usr/bin/env python3
"""Health of the TorchServe in this container, for Docker's HEALTHCHECK and Kubernetes' probes.

    healthcheck ready   # a worker of the model is READY (management API)    -> exit 0, else 1
    healthcheck live    # the inference API answers /ping                    -> exit 0, else 1

Token authorization (TorchServe 0.12's default) protects /ping and the management API with keys
that TorchServe generates at start and writes to key_file.json in its working directory; it
cannot be given keys. This script therefore runs beside the server (``docker exec``, an exec
probe) and reads that file; without one (token authorization off) it sends no token.

- ready: GET <management>/models/<model>. The management key expires (token_expiration_min,
  TorchServe's default 60 minutes, 7 days in our configs); on an expired key the script asks
  for a new management key with the API key (which does not expire) and retries, so probes
  keep working. Client (inference) keys are never touched.
- live: GET <inference>/ping with the inference key. "Healthy" passes; an answer refusing the
  key (expired or rotated) also passes, since the server did answer; no answer, a timeout or
  "Unhealthy" (a worker that cannot be kept up) fails.

Addresses come from the active TorchServe config: --config, else $TS_CONFIG_FILE, else the
entry point's merged config /tmp/ts-config.properties, else the image's
/opt/saliency/config.properties. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

CONFIGS = ("/tmp/ts-config.properties", "/opt/saliency/config.properties")
MODEL = "squeezenet_saliency"
DEFAULTS = {
    "inference_address": "http://127.0.0.1:8080",
    "management_address": "http://127.0.0.1:8081",
}


def read_properties(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")) and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()  # the last occurrence wins, as in TorchServe
    return values


def local_url(address: str) -> str:
    """A URL this process can call for a bind address (0.0.0.0 -> 127.0.0.1)."""
    for wildcard in ("0.0.0.0", "[::]"):
        address = address.replace(f"//{wildcard}:", "//127.0.0.1:")
    return address.rstrip("/")


def read_keys(key_file: Path) -> dict[str, str]:
    if not key_file.is_file():
        return {}
    data = json.loads(key_file.read_text(encoding="utf-8"))
    names = {"inference": "inference", "management": "management", "api": "API"}
    return {kind: data[name]["key"] for kind, name in names.items() if name in data}


def call(url: str, key: str | None, timeout: float) -> tuple[int, str]:
    """(HTTP status, body); status 0 when there was no HTTP answer."""
    request = urllib.request.Request(url)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8", "replace")
    except (OSError, ValueError) as error:
        return 0, str(error)


def key_refused(status: int, body: str) -> bool:
    return status in (400, 401) and "Token Authorization failed" in body


def ready(config: dict[str, str], key_file: Path, model: str, timeout: float) -> tuple[bool, str]:
    management = local_url(config.get("management_address", DEFAULTS["management_address"]))
    keys = read_keys(key_file)
    status, body = call(f"{management}/models/{model}", keys.get("management"), timeout)
    if key_refused(status, body) and keys.get("api"):
        # The management key expired: get a new one (TorchServe rewrites key_file.json).
        call(f"{management}/token?type=management", keys["api"], timeout)
        keys = read_keys(key_file)
        status, body = call(f"{management}/models/{model}", keys.get("management"), timeout)
    if status != 200:
        return False, f"management API: HTTP {status} {body[:200]}"
    try:
        workers = json.loads(body)[0].get("workers", [])
    except (ValueError, IndexError, AttributeError):
        return False, f"unexpected answer: {body[:200]}"
    states = [worker.get("status") for worker in workers]
    return "READY" in states, f"{model} workers: {states}"


def live(config: dict[str, str], key_file: Path, timeout: float) -> tuple[bool, str]:
    inference = local_url(config.get("inference_address", DEFAULTS["inference_address"]))
    status, body = call(f"{inference}/ping", read_keys(key_file).get("inference"), timeout)
    if status == 200:
        return True, body.strip()
    if key_refused(status, body):
        return True, "the inference API answered (it refused an expired or rotated key)"
    return False, f"/ping: HTTP {status} {body[:200]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("check", choices=["ready", "live"])
    parser.add_argument("--config", type=Path, help="TorchServe config.properties")
    parser.add_argument("--key-file", type=Path, default=Path("key_file.json"))
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--timeout", type=float, default=4.0, help="seconds per HTTP call")
    args = parser.parse_args(argv)

    candidates = [args.config, os.environ.get("TS_CONFIG_FILE"), *CONFIGS]
    found = [Path(c) for c in candidates if c and Path(c).is_file()]
    config = read_properties(found[0]) if found else {}
    try:
        if args.check == "ready":
            ok, detail = ready(config, args.key_file, args.model, args.timeout)
        else:
            ok, detail = live(config, args.key_file, args.timeout)
    except (OSError, ValueError, KeyError) as error:  # e.g. key_file.json half-written
        ok, detail = False, f"{type(error).__name__}: {error}"
    print(f"{args.check}: {'ok' if ok else 'FAIL'}: {detail}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
