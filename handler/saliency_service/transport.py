"""Per-request response headers that depend on how a request reached TorchServe (HTTP or gRPC).

The worker is never told the front end's command (predict, streampredict, ...), but TorchServe
0.12's front end forwards different request headers:

- HTTP: every request header (``Authorization``, which token authorization requires,
  ``Content-Type``, ``Host``, ...) plus its own ``explain`` and ``url_path``.
- gRPC ``Predictions`` and ``StreamPredictions``: none at all. The worker's request properties
  hold only the input names, each mapped to a ``{"content-type": ...}`` dict.
- gRPC ``StreamPredictions2``: the sequence headers only (``ts_request_sequence_id``, ...).

``StreamPredictions`` needs the response header ``ts_stream_next``: without it the front end's
``GRPCJob.response`` throws a NullPointerException and the worker is restarted; with "false" it
sends this one answer and ends the stream. ``Predictions`` ignores the header, and
``StreamPredictions2`` treats a missing one like "false". On HTTP the header must never be set:
``RestJob`` would take the answer for the last chunk of a stream and never send its headers.

No answer makes ``StreamPredictions2`` safe: for a model without sequence batching the front end
has already ended the call when the answer comes (its ``onNext`` throws on ``Model.getJobGroup``),
so ``GRPCJob.response`` throws IllegalStateException and the front end's worker thread dies
without restarting the worker: the model stops answering while its worker is still listed READY.
The handler can only name the cause in the log; keeping the gRPC port from untrusted clients is
the operator's part (README, "gRPC").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

STREAM_NEXT = "ts_stream_next"
# TorchServe's default names (ts_header_key_sequence_* in config.properties, which we never set).
SEQUENCE_HEADERS = frozenset(
    {"ts_request_sequence_id", "ts_request_sequence_start", "ts_request_sequence_end"}
)


def without_request_headers(properties: Mapping[str, Any]) -> bool:
    """True for a gRPC Predictions/StreamPredictions request: no string-valued request header.

    ``properties`` is the worker's view of one request (``context.get_all_request_header``):
    request headers map to strings, input names to dicts.
    """
    return not any(isinstance(value, str) for value in properties.values())


def response_headers(properties: Mapping[str, Any]) -> dict[str, str]:
    """The headers to set on one request's answer so that the front end can deliver it."""
    return {STREAM_NEXT: "false"} if without_request_headers(properties) else {}


def stream_predictions2(properties: Mapping[str, Any]) -> bool:
    """True for a gRPC StreamPredictions2 request: its only request headers are sequence ones."""
    headers = {name for name, value in properties.items() if isinstance(value, str)}
    return bool(headers) and headers <= SEQUENCE_HEADERS
