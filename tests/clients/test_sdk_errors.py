"""Error mapping: one exception class per status family, filled from the server's envelope."""

from __future__ import annotations

import httpx
import pytest
from kava_client import (
    APIResponseValidationError,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    GatewayTimeoutError,
    InternalServerError,
    KavaError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
    UnprocessableEntityError,
)

STATUS_CLASSES = [
    (400, BadRequestError),
    (401, AuthenticationError),
    (403, PermissionDeniedError),
    (404, NotFoundError),
    (409, ConflictError),
    (422, UnprocessableEntityError),
    (429, RateLimitError),
    (500, InternalServerError),
    (502, InternalServerError),
    (503, ServiceUnavailableError),
    (504, GatewayTimeoutError),
]


@pytest.mark.parametrize(("status", "cls"), STATUS_CLASSES)
def test_each_status_maps_to_its_exception(twin, server, error, status, cls):
    fake = server(error(status, "some_type", f"went wrong with {status}", param="adapter", X_Request_Id="srv-9"))
    with pytest.raises(cls) as info:
        twin.call(fake, "solve", "q", client={"max_retries": 0})
    e = info.value
    assert type(e) is cls and isinstance(e, APIStatusError) and isinstance(e, KavaError)
    assert (e.status, e.status_code) == (status, status)
    assert e.error_type == "some_type"
    assert e.message == f"went wrong with {status}"
    assert e.param == "adapter"
    assert e.request_id == "srv-9"  # surfaced from the X-Request-Id header
    assert e.body == {"error": {"type": "some_type", "message": f"went wrong with {status}", "param": "adapter"}}


def test_request_id_falls_back_to_the_one_sent(twin, server, error):
    fake = server(error(404, "adapter_not_found", "adapter 'nope' is not loaded"))
    with pytest.raises(NotFoundError) as info:
        twin.call(fake, "solve", "q", adapter="nope", request_id="mine-1")
    assert info.value.request_id == "mine-1"


def test_request_id_in_the_envelope_is_used_without_the_header(twin, server):
    body = {"error": {"type": "engine_error", "message": "CUDA error", "param": None, "request_id": "body-3"}}
    fake = server(httpx.Response(500, json=body))
    with pytest.raises(InternalServerError) as info:
        twin.call(fake, "solve", "q", client={"max_retries": 0})
    assert info.value.request_id == "body-3"


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (lambda r: httpx.Response(502, text="Bad gateway from the proxy"), "Bad gateway from the proxy"),
        (lambda r: httpx.Response(422, json={"detail": "field required"}), "field required"),
        (lambda r: httpx.Response(503), "Service Unavailable"),
    ],
)
def test_bodies_without_the_envelope_still_give_a_message(twin, server, response, message):
    with pytest.raises(APIStatusError) as info:
        twin.call(server(response), "solve", "q", client={"max_retries": 0})
    assert info.value.message == message and info.value.error_type is None


@pytest.mark.parametrize(
    "response", [lambda r: httpx.Response(200, text="<html>"), lambda r: httpx.Response(200, json={"answer": "1"})]
)
def test_a_success_body_off_contract_raises_validation_error(twin, server, response):
    with pytest.raises(APIResponseValidationError) as info:
        twin.call(server(response), "solve", "q")
    assert info.value.status == 200


def test_error_text_names_status_type_message_and_request_id(twin, server, error):
    fake = server(error(422, "invalid_request", "max_new_tokens=99999: must be <= 512", param="max_new_tokens"))
    with pytest.raises(UnprocessableEntityError) as info:
        twin.call(fake, "solve", "q", request_id="r-42")
    assert str(info.value) == (
        "HTTP 422 invalid_request: max_new_tokens=99999: must be <= 512 (param: max_new_tokens) [request_id=r-42]"
    )
