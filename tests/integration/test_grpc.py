"""TorchServe's gRPC inference API against the real server, through TorchServe's own protos.

The stubs are compiled at test time from tests/proto/ (scripts/grpc_stubs.py). What is pinned
here: Predictions classifies like HTTP, options travel as other input keys, the service's errors
arrive with status OK and the error JSON, the token is enforced, StreamPredictions answers with
one message without restarting the worker, and what StreamPredictions2 does (on a server of its
own: a sequenced call stops the model, which is why gRPC stays on loopback).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import grpc
import pytest
import reference
from hardening import assert_same_answer, concurrently
from photos import KNOWN_CLASSES, labelled_photos
from serving import post, wait_for

import saliency_handler
from saliency_tools import MODEL_NAME, SAMPLED_MODEL_NAME, client, grpc_stubs
from saliency_tools.server import Server, pid_alive

PHOTOS = labelled_photos()
GOOD = PHOTOS["coffee"]
STUBS = grpc_stubs.load()
Request = STUBS.inference_pb2.PredictionsRequest


@pytest.fixture(scope="module")
def channel(server: Server) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc_address()) as opened:
        yield opened


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel):
    return STUBS.inference_pb2_grpc.InferenceAPIsServiceStub(channel)


def auth(server: Server, token: str = "inference") -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {server.keys.get(token, token)}"),)


def request(**fields: bytes | str) -> Request:
    return Request(
        model_name=MODEL_NAME,
        input={k: v.encode() if isinstance(v, str) else v for k, v in fields.items()},
    )


def predict(stub, server: Server, **fields: bytes | str) -> dict:
    """One Predictions call; its status must be OK (even for a refused request, see below)."""
    reply, call = stub.Predictions.with_call(request(**fields), metadata=auth(server), timeout=120)
    assert call.code() == grpc.StatusCode.OK
    return json.loads(reply.prediction)


# --- Predictions -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_known_photos_get_their_class_in_the_top_3(stub, server, name: str) -> None:
    answer = predict(stub, server, data=PHOTOS[name])
    assert {entry["index"] for entry in answer["topk"][:3]} & KNOWN_CLASSES[name], answer["topk"]
    assert answer["prediction"] == answer["topk"][0]
    assert reference.decode_png(answer["saliency"]["png"]).shape == (224, 224)


def test_the_image_key_and_http_give_the_same_answer(stub, server) -> None:
    over_http = post(server, GOOD)
    assert over_http.status_code == 200, over_http.text
    for key in ("data", "image"):
        answer = predict(stub, server, **{key: GOOD})
        # Batches may differ in size: the maps then agree to a few 8-bit levels.
        assert_same_answer(over_http.json(), answer, levels=reference.MAX_LEVELS)


def test_options_travel_as_other_input_keys(stub, server) -> None:
    answer = predict(
        stub,
        server,
        data=PHOTOS["chelsea"],
        topk="3",
        target="tabby",
        objective="loss",
        colormap="hot",
        overlay="true",
    )
    assert len(answer["topk"]) == 3
    assert answer["target"]["index"] == 281
    assert answer["saliency"]["objective"] == "loss"
    assert answer["heatmap"]["colormap"] == "hot" and answer["overlay"]["png"]


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"data": b"this is not an image"}, "invalid_image"),
        ({"data": GOOD[: len(GOOD) // 3]}, "invalid_image"),
        ({"data": GOOD, "colour": "red"}, "unknown_option"),
        ({"data": GOOD, "topk": "0"}, "invalid_option"),
        ({"data": GOOD, "target": "crane"}, "ambiguous_label"),
        ({"picture": GOOD}, "missing_image"),
    ],
)
def test_errors_arrive_with_status_ok_and_the_error_json(stub, server, fields, code) -> None:
    """TorchServe's GRPCJob ignores the handler's per-request status: the body says it failed."""
    answer = predict(stub, server, **fields)
    assert set(answer) == {"error"} and answer["error"]["code"] == code, answer
    assert answer["error"]["message"].strip()


# --- tokens ------------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "not-the-key", "management", "api"])
def test_inference_needs_the_inference_key(stub, server, token) -> None:
    metadata = auth(server, token) if token else ()
    with pytest.raises(grpc.RpcError) as refused:
        stub.Predictions(request(data=GOOD), metadata=metadata, timeout=60)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize("token", [None, "inference", "api"])
def test_grpc_management_needs_the_management_key(server, token) -> None:
    describe = STUBS.management_pb2.DescribeModelRequest(model_name=MODEL_NAME)
    with grpc.insecure_channel(server.grpc_address("management")) as channel:
        management = STUBS.management_pb2_grpc.ManagementAPIsServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            management.DescribeModel(describe, metadata=auth(server, token) if token else ())
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        described = management.DescribeModel(describe, metadata=auth(server, "management"))
    assert json.loads(described.msg)[0]["modelName"] == MODEL_NAME


# --- streaming RPCs: answered or refused, never a restarted worker ------------------------------


def test_stream_predictions_answers_with_one_message(stub, server) -> None:
    """Without ts_stream_next the front end throws in GRPCJob.response: 'Worker died.'."""
    workers = server.worker_pids(None)
    good = list(stub.StreamPredictions(request(data=GOOD), metadata=auth(server), timeout=120))
    bad = list(stub.StreamPredictions(request(data=b"junk"), metadata=auth(server), timeout=120))
    assert len(good) == len(bad) == 1
    assert json.loads(good[0].prediction)["prediction"]["index"] == 967  # espresso
    assert json.loads(bad[0].prediction)["error"]["code"] == "invalid_image"
    assert server.worker_pids(None) == workers


def test_http_and_grpc_streams_batched_together_are_each_answered_right(stub, server) -> None:
    """ts_stream_next is set per request: on HTTP it would end the answer before its headers."""
    workers = server.worker_pids(None)

    def stream() -> list:
        return list(stub.StreamPredictions(request(data=GOOD), metadata=auth(server), timeout=120))

    answers = concurrently([stream, lambda: post(server, GOOD)] * 4)
    for answer in answers:
        if isinstance(answer, list):
            assert len(answer) == 1
            assert json.loads(answer[0].prediction)["prediction"]["index"] == 967
        else:
            assert answer.status_code == 200, answer.text
            assert answer.headers["Content-Type"].startswith("application/json")
            assert answer.json()["prediction"]["index"] == 967
    assert server.worker_pids(None) == workers


@pytest.fixture
def own_server(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server of its own for one test: a sequenced StreamPredictions2 stops its model for
    good, so no other test may share it (whatever the order)."""
    instance = Server(
        workdir=tmp_path_factory.mktemp("torchserve-grpc"), model_store=server.model_store
    )
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


def stream2(server: Server, message: Request) -> list:
    """One StreamPredictions2 call on a channel of its own (the front end may GOAWAY it)."""
    with grpc.insecure_channel(server.grpc_address()) as channel:
        stub = STUBS.inference_pb2_grpc.InferenceAPIsServiceStub(channel)
        return list(stub.StreamPredictions2(iter([message]), metadata=auth(server), timeout=60))


def test_stream_predictions2_without_a_sequence_id_is_refused_cleanly(server) -> None:
    """Refused by the front end itself, so the shared server is safe; the sequenced call, which
    stops the model, gets a server of its own (``own_server``), used by that test alone."""
    workers = server.worker_pids(None)
    replies = stream2(server, request(data=GOOD))
    assert len(replies) == 1 and not replies[0].prediction
    assert replies[0].status.code == grpc.StatusCode.INTERNAL.value[0]
    assert "sequenceId is required" in replies[0].status.message
    assert post(server, GOOD).json()["prediction"]["index"] == 967
    assert server.worker_pids(None) == workers


def test_stream_predictions2_with_a_sequence_id_stops_the_model(own_server) -> None:
    """Why gRPC must stay out of untrusted clients' reach (README, "gRPC"): TorchServe 0.12's
    StreamPredictions2 is for sequence-batching models; on this one its onNext throws
    (Model.getJobGroup), the call ends UNKNOWN, and delivering the handler's answer later throws
    IllegalStateException in the front end's worker thread, which dies without restarting the
    worker. The worker's process exits while the management API still lists it READY. Nothing
    in the handler can prevent it; the handler names the cause in the model log."""
    sequenced = request(data=GOOD)
    sequenced.sequence_id = "sequence-1"
    [worker] = own_server.worker_pids()
    with pytest.raises(grpc.RpcError) as ended:
        stream2(own_server, sequenced)
    assert ended.value.code() == grpc.StatusCode.UNKNOWN
    assert wait_for(lambda: not pid_alive(worker), timeout=120), "the worker kept running"
    assert own_server.worker_pids() == [worker]  # still listed, though gone
    assert "IllegalStateException" in own_server.log_text("ts_log.log")
    assert saliency_handler.STREAM2_WARNING in own_server.log_text()


# --- scripts/client.py --grpc ------------------------------------------------------------------


def test_client_script_over_grpc(server, tmp_path, capsys) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "coffee.png").write_bytes(GOOD)
    (tmp_path / "in" / "broken.png").write_bytes(b"not a png")
    common = ["--grpc", "--grpc-address", server.grpc_address(), "--out", str(tmp_path / "out")]
    status = client.main(
        [str(tmp_path / "in"), *common, f"--token={server.keys['inference']}", "--topk", "3"]
    )
    assert status == 1  # one image failed
    printed = capsys.readouterr()
    assert "broken.png: failed: invalid_image" in printed.err
    assert "1 ok, 1 failed" in printed.out
    answer = json.loads((tmp_path / "out" / "coffee.json").read_text())
    assert answer["prediction"]["index"] == 967 and len(answer["topk"]) == 3
    assert (tmp_path / "out" / "coffee.saliency.png").is_file()

    assert client.main([str(tmp_path / "in" / "coffee.png"), *common, "--token", "wrong"]) == 1
    assert "failed: PERMISSION_DENIED" in capsys.readouterr().err


def test_expensive_methods_name_the_sampled_model_and_the_client_goes_there(stub, server) -> None:
    """gRPC has no redirects: the interactive model answers with the error JSON and where to go;
    scripts/client.py then calls that model, which answers."""
    options = {"method": "smoothgrad", "samples": "3", "seed": "4"}
    refused = predict(stub, server, data=GOOD, **options)
    assert refused["error"]["code"] == "served_by_another_model"
    assert refused["error"]["location"] == f"/predictions/{SAMPLED_MODEL_NAME}"
    grpc_client = client.GrpcClient(server.grpc_address(), server.keys["inference"])
    answer = grpc_client.predict(GOOD, {"method": "smoothgrad", "samples": 3, "seed": 4})
    assert answer["saliency"]["method"] == "smoothgrad" and answer["saliency"]["seed"] == 4
    document = {"image": base64.b64encode(GOOD).decode(), "method": "smoothgrad", "samples": 3}
    over_http = post(server, json_body={**document, "seed": 4})  # requests follows the 307
    assert over_http.status_code == 200 and over_http.history[0].status_code == 307
    assert_same_answer(over_http.json(), answer, levels=reference.MAX_LEVELS)
