"""Schemathesis, every check, against a live server's own OpenAPI document: 0 failures.

The server runs under uvicorn over the tiny model with a key (so `ignored_auth` probes every
route without it) and limits small enough that every schema-valid question fits the model's
context (the token check is tested in test_server_errors.py). Each operation gets a bounded
number of positive and negative examples, derandomized so the run is the same on every
machine. Runtime adapter loading is off here (no adapter root), so the admin routes answer
403 to schema-valid input; their behaviour with a root is in test_server_adapter_routes.py.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from server_harness import app_over, live_server

KEY = "fuzz-key"
EXAMPLES = 25


@pytest.fixture(scope="module")
def live(runner):
    app = app_over(runner, api_key=KEY, max_question_chars=40, max_new_tokens_limit=16, max_new_tokens_cot=8)
    with live_server(app) as url:
        yield url


@pytest.fixture(scope="module")
def api(live):
    return schemathesis.openapi.from_url(f"{live}/openapi.json")


schema = schemathesis.pytest.from_fixture("api")


@schema.parametrize()
@settings(
    max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)
def test_the_api_keeps_its_own_contract(case):
    case.call_and_validate(headers={"Authorization": f"Bearer {KEY}"})
