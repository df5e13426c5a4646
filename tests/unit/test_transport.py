"""ts_stream_next is set for gRPC Predictions/StreamPredictions requests only, never on HTTP;
gRPC StreamPredictions2 requests are recognised by their sequence headers alone.

The requests are built the way TorchServe 0.12's front end frames them (the headers it forwards,
observed by logging them in a handler) and turned into the worker's view by TorchServe's own
``Service.retrieve_data_for_inference``, so the test follows the real property layout.
"""

from __future__ import annotations

import pytest
from ts.service import Service

from saliency_service.transport import (
    STREAM_NEXT,
    response_headers,
    stream_predictions2,
    without_request_headers,
)


def worker_view(headers: dict[str, str], inputs: dict[str, str]) -> dict:
    """One request's properties as the Python worker exposes them to the handler."""
    request = {
        "requestId": b"r-1",
        "headers": [{"name": k.encode(), "value": v.encode()} for k, v in headers.items()],
        "parameters": [
            {"name": name, "contentType": content_type, "value": b"x"}
            for name, content_type in inputs.items()
        ],
    }
    processors, _, _ = Service.retrieve_data_for_inference([request])
    return processors[0].get_request_properties()


HTTP_HEADERS = {
    "Authorization": "Bearer k",
    "Content-Type": "application/octet-stream",
    "Host": "127.0.0.1:8080",
    "explain": "False",
    "url_path": "",
}
SEQUENCE_HEADERS = {"ts_request_sequence_id": "s-1", "ts_request_sequence_end": "true"}


@pytest.mark.parametrize(
    ("headers", "inputs"),
    [
        (HTTP_HEADERS, {"body": "application/octet-stream"}),  # raw or JSON body
        (HTTP_HEADERS, {"image": "image/png", "topk": ""}),  # multipart
        ({"Authorization": "Bearer k"}, {"body": ""}),  # the least an authorised request sends
        (SEQUENCE_HEADERS, {"data": ""}),  # gRPC StreamPredictions2: a missing header is "false"
    ],
)
def test_requests_with_headers_get_no_stream_header(headers, inputs) -> None:
    properties = worker_view(headers, inputs)
    assert not without_request_headers(properties)
    assert response_headers(properties) == {}


@pytest.mark.parametrize(
    "inputs", [{"data": ""}, {"image": "", "topk": "", "target": ""}, {"Authorization": ""}, {}]
)
def test_grpc_requests_end_the_stream_after_their_answer(inputs) -> None:
    properties = worker_view({}, inputs)
    assert without_request_headers(properties)
    assert response_headers(properties) == {STREAM_NEXT: "false"}


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (SEQUENCE_HEADERS, True),
        ({"ts_request_sequence_id": "s-1", "ts_request_sequence_start": "true"}, True),
        ({}, False),  # Predictions / StreamPredictions
        (HTTP_HEADERS, False),
        ({**HTTP_HEADERS, **SEQUENCE_HEADERS}, False),  # an HTTP client sending such headers
    ],
)
def test_stream_predictions2_is_told_by_its_sequence_headers_alone(headers, expected) -> None:
    assert stream_predictions2(worker_view(headers, {"data": ""})) is expected
