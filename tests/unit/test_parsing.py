"""Request rows as TorchServe hands them over: raw, JSON, JSON sent as bytes, multipart.

Bad requests are the shared matrix of tests/bad_inputs.py, answered here by the in-process
service (``SaliencyService.handle_batch``) and in tests/integration/test_bad_input.py by the real
TorchServe.
"""

from __future__ import annotations

import base64
import json
import string
from typing import Any

import pytest
from bad_inputs import BAD_REQUESTS, ROW_ONLY, BadRequest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saliency_service.errors import RequestError
from saliency_service.labels import Labels, torchvision_categories
from saliency_service.parsing import Options, RequestLimits, SaliencyRequest, parse_request
from saliency_service.pipeline import Answer, SaliencyService

IMAGE = bytes(range(256)) * 3 + b"\xfb\xff\xfe"  # opaque bytes: parsing does not decode images
B64 = base64.b64encode(IMAGE).decode("ascii")
OPTIONS = {
    "target": 281,
    "topk": 3,
    "objective": "loss",
    "colormap": "hot",
    "overlay": True,
    "saliency": True,
}
EXPECTED = Options(target=281, topk=3, objective="loss", colormap="hot", overlay=True)


def refused(row: Any, labels: Labels, limits: RequestLimits = RequestLimits()) -> RequestError:
    with pytest.raises(RequestError) as caught:
        parse_request(row, labels, limits)
    assert caught.value.message
    return caught.value


def as_multipart(image: bytes, options: dict[str, Any]) -> dict[str, bytearray]:
    """TorchServe's row for multipart/form-data: every field as a bytearray."""
    fields = {"image": bytearray(image)}
    for name, value in options.items():
        text = json.dumps(value) if isinstance(value, bool) else str(value)
        fields[name] = bytearray(text.encode())
    return fields


# --- the four shapes of a row -----------------------------------------------------------------


def test_raw_body_is_the_image_with_default_options(labels) -> None:
    request = parse_request({"body": bytearray(IMAGE)}, labels)
    assert isinstance(request, SaliencyRequest)
    assert request.image == IMAGE
    assert isinstance(request.image, bytes)
    assert request.options == Options(
        target=None, topk=5, objective="score", colormap="gray", overlay=False, saliency=True
    )


@pytest.mark.parametrize(
    "row",
    [
        pytest.param({"body": {"image": B64, **OPTIONS}}, id="json"),
        pytest.param({"data": {"image": B64, **OPTIONS}}, id="json-data-key"),
        pytest.param({"body": json.dumps({"image": B64, **OPTIONS}).encode()}, id="json-bytes"),
        pytest.param(
            {"body": bytearray(b"\n  " + json.dumps({"image": B64, **OPTIONS}).encode())},
            id="json-bytearray-leading-space",
        ),
        pytest.param({"body": json.dumps({"image": B64, **OPTIONS})}, id="json-text"),
        pytest.param(as_multipart(IMAGE, OPTIONS), id="multipart"),
    ],
)
def test_every_row_shape_gives_the_same_request(labels, row) -> None:
    request = parse_request(row, labels)
    assert request.image == IMAGE
    assert request.options == EXPECTED


def test_multipart_strings_are_coerced(labels) -> None:
    row = {
        "image": bytearray(IMAGE),
        "target": bytearray(b"281"),
        "topk": bytearray(b" 7 "),
        "objective": bytearray(b"LOSS"),
        "colormap": bytearray(b"hot"),
        "overlay": bytearray(b"true"),
        "saliency": bytearray(b"yes"),
    }
    options = parse_request(row, labels).options
    assert options == Options(
        target=281, topk=7, objective="loss", colormap="hot", overlay=True, saliency=True
    )


@pytest.mark.parametrize(
    "body",
    [
        json.dumps({"image": B64, "topk": 2}).encode("utf-8-sig"),
        json.dumps({"image": B64, "topk": 2}).encode("utf-16"),
        json.dumps({"image": B64, "topk": 2}).encode("utf-16-le"),
        json.dumps({"image": B64, "topk": 2}).encode("utf-32"),
    ],
)
def test_json_in_any_unicode_encoding_is_read(labels, body) -> None:
    assert parse_request({"body": body}, labels).options.topk == 2


@pytest.mark.parametrize(("value", "expected"), [(1, True), (0, False), ("1", True), ("0", False)])
def test_one_rule_for_booleans_in_json_and_forms(labels, value, expected) -> None:
    as_json = parse_request({"body": {"image": B64, "overlay": value}}, labels).options
    as_form = {"image": bytearray(IMAGE), "overlay": bytearray(str(value).encode())}
    assert as_json.overlay == parse_request(as_form, labels).options.overlay == expected


@pytest.mark.parametrize(
    ("word", "value"),
    [
        *[(word, True) for word in ("true", "1", "yes", "on", "TRUE")],
        *[(word, False) for word in ("false", "0", "no", "off", "False")],
    ],
)
def test_boolean_words(labels, word, value) -> None:
    row = {"image": bytearray(IMAGE), "overlay": bytearray(word.encode())}
    assert parse_request(row, labels).options.overlay is value


def test_multipart_image_may_be_named_data(labels) -> None:
    row = {"data": bytearray(IMAGE), "topk": bytearray(b"2")}
    request = parse_request(row, labels)
    assert request.image == IMAGE
    assert request.options.topk == 2


def test_json_accepts_integral_floats_and_null_target(labels) -> None:
    doc = {"image": B64, "topk": 4.0, "target": None}
    assert parse_request({"body": doc}, labels).options == Options(topk=4)
    assert parse_request({"body": {"image": B64, "target": 12.0}}, labels).options.target == 12


# --- base64 ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "encoded",
    [
        pytest.param(B64, id="standard"),
        pytest.param(B64.rstrip("="), id="unpadded"),
        pytest.param(base64.urlsafe_b64encode(IMAGE).decode(), id="urlsafe"),
        pytest.param(base64.urlsafe_b64encode(IMAGE).decode().rstrip("="), id="urlsafe-unpadded"),
        pytest.param("data:image/png;base64," + B64, id="data-url"),
        pytest.param(base64.encodebytes(IMAGE).decode(), id="mime-newlines"),
        pytest.param("  " + B64.replace("A", "A\r\n", 3) + "\n", id="whitespace"),
    ],
)
def test_base64_variants(labels, encoded) -> None:
    assert parse_request({"body": {"image": encoded}}, labels).image == IMAGE


def test_base64_premise_uses_both_alphabets() -> None:
    """The variants above test something: the standard and URL-safe encodings differ."""
    assert "+" in B64 and "/" in B64
    assert base64.urlsafe_b64encode(IMAGE).decode() != B64


def test_base64_over_the_byte_limit(labels) -> None:
    limits = RequestLimits(max_image_bytes=len(IMAGE))
    assert parse_request({"body": {"image": B64}}, labels, limits).image == IMAGE
    larger = base64.b64encode(IMAGE + b"xyz").decode()
    error = refused({"body": {"image": larger}}, labels, limits)
    assert (error.code, error.status) == ("payload_too_large", 413)


# --- bad requests: the shared matrix ------------------------------------------------------------


@pytest.fixture(scope="module")
def service(model, labels) -> SaliencyService:
    """Production limits (the defaults); bad requests never reach the model."""
    return SaliencyService(model, labels, "cpu")


def assert_error(answer: Answer, status: int, code: str) -> str:
    """The answer is the service's error of this status and code; returns its message."""
    assert answer.status == status, answer.body
    assert set(answer.body) == {"error"} and set(answer.body["error"]) == {"code", "message"}
    assert answer.body["error"]["code"] == code, answer.body
    message = answer.body["error"]["message"]
    assert isinstance(message, str) and message.strip()
    return message


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=str)
def test_bad_requests_get_their_status_and_code(service, case: BadRequest) -> None:
    (answer,) = service.handle_batch([case.row()])
    message = assert_error(answer, case.status, case.code)
    assert all(text in message for text in case.says), message
    assert len(message) < case.max_message


@pytest.mark.parametrize("name", sorted(ROW_ONLY))
def test_rows_no_http_request_makes_are_refused_too(service, name) -> None:
    row, status, code = ROW_ONLY[name]
    (answer,) = service.handle_batch([row])
    assert_error(answer, status, code)


# --- options -------------------------------------------------------------------------------------


def test_topk_bounds_follow_the_limits(labels) -> None:
    limits = RequestLimits(max_topk=3)
    assert parse_request({"body": {"image": B64, "topk": 3}}, labels, limits).options.topk == 3
    assert refused({"body": {"image": B64, "topk": 4}}, labels, limits).code == "invalid_option"
    assert parse_request({"body": {"image": B64, "topk": 20}}, labels).options.topk == 20


# --- labels -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "index"),
    [
        ("tabby", 281),
        ("Golden Retriever", 207),
        ("GOLDEN RETRIEVER", 207),
        ("  golden   retriever ", 207),
        ("crane bird", 134),
        ("maillot tank suit", 639),
        ("281", 281),
        ("+281", 281),
        (" 0 ", 0),
        ("999", 999),
    ],
)
def test_target_by_name_or_index(labels, label, index) -> None:
    assert labels.resolve(label) == index
    assert parse_request({"body": {"image": B64, "target": label}}, labels).options.target == index


def test_torchvision_names_premises(labels) -> None:
    """What the label cases of tests/bad_inputs.py rely on about torchvision's names."""
    names = torchvision_categories()
    assert len(names) == 1000
    assert (names[134], names[517]) == ("crane bird", "crane")
    assert (names[264], names[474]) == ("Cardigan", "cardigan")
    assert (names[638], names[639]) == ("maillot", "maillot tank suit")
    assert labels[207] == "golden retriever"


def test_labels_need_1000_names() -> None:
    with pytest.raises(ValueError):
        Labels(torchvision_categories()[:999])


@pytest.mark.parametrize("shape", ["list", "index_to_name"])
def test_labels_from_json(tmp_path, shape) -> None:
    names = torchvision_categories()
    data = names if shape == "list" else {str(i): name for i, name in enumerate(names)}
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    loaded = Labels.from_json(path)
    assert loaded.names == names
    assert loaded.resolve("tabby") == 281


# --- property: a RequestError or a request, nothing else ---------------------------------------

OPTION_KEYS = [*OPTIONS, "image", "data", "body", "foo"]
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**4), 10**4)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["281", "tabby", "crane", "hot", "loss", "true", " 3 ", B64]),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)
option_values = json_values | st.from_regex(r"\A[ +-]{0,2}[0-9]{1,4} ?\Z")
documents = st.fixed_dictionaries(
    {},
    optional={
        "image": st.just(B64) | st.text(alphabet=string.ascii_letters + "+/=-_ \n", max_size=16),
        **{name: option_values for name in OPTIONS},
        "foo": json_values,
    },
)


def as_field(value: Any) -> bytes:
    """A multipart field's bytes: text as typed, anything else as its JSON."""
    return value.encode() if isinstance(value, str) else json.dumps(value).encode()


multipart = st.dictionaries(
    st.sampled_from(OPTION_KEYS) | st.text(max_size=6),
    st.binary(max_size=16) | option_values.map(as_field),
    max_size=5,
)
rows = st.one_of(
    st.fixed_dictionaries({"body": documents}),
    documents.map(lambda d: {"body": json.dumps(d).encode()}),
    st.fixed_dictionaries({"body": st.binary(max_size=32) | st.text(max_size=32) | json_values}),
    multipart,
    json_values,
)


@settings(
    max_examples=100,  # measured: 8 of the 9 outcomes of 200; unknown_label: BAD_REQUESTS
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(row=rows)
def test_any_row_gives_a_request_or_a_request_error(labels, row) -> None:
    try:
        request = parse_request(row, labels)
    except RequestError as error:
        assert error.code and error.message
        assert 400 <= error.status < 500
        return
    assert isinstance(request, SaliencyRequest)
    assert isinstance(request.image, bytes) and request.image
    options = request.options
    assert options.target is None or 0 <= options.target < 1000
    assert 1 <= options.topk <= 20
    assert options.objective in ("score", "loss")
    assert options.colormap in ("gray", "hot")
    assert isinstance(options.overlay, bool) and isinstance(options.saliency, bool)
