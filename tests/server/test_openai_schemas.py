"""The OpenAI request schemas say what the server honours: the OpenAPI document admits exactly
the values the validators accept, and every refusal explains itself. No server runs here."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from server.app import create_app
from server.openai_schemas import UNSUPPORTED, ChatCompletionRequest, CompletionRequest
from server.settings import Settings

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "What is 2 + 3?"}]}
COMPLETION = {"model": "tiny", "prompt": "What is 2 + 3?"}

# field -> (a value that asks for nothing, a value the server cannot honour)
CASES: dict[str, tuple[Any, Any]] = {
    "n": (1, 2),
    "best_of": (1, 3),
    "temperature": (0, 0.7),
    "presence_penalty": (0.0, 0.5),
    "frequency_penalty": (0, -1.0),
    "logit_bias": ({}, {"50256": -100.0}),
    "stop": ([], ["\n"]),
    "logprobs": (False, True),
    "top_logprobs": (0, 5),
    "echo": (False, True),
    "suffix": (None, "!"),
    "tools": ([], [{"type": "function", "function": {"name": "add"}}]),
    "functions": ([], [{"name": "add"}]),
    "tool_choice": ("none", "auto"),
    "function_call": ("none", "auto"),
    "response_format": ({"type": "text"}, {"type": "json_object"}),
}


def _request(field: str) -> tuple[type, dict[str, Any]]:
    if field in ChatCompletionRequest.model_fields:
        return ChatCompletionRequest, CHAT
    return CompletionRequest, COMPLETION


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return create_app(Settings(adapters=["tiny=/nowhere/tiny"], warmup=False)).openapi()


def _validator(spec: dict[str, Any], model: type):
    jsonschema = pytest.importorskip("jsonschema")
    schema = {"$ref": f"#/components/schemas/{model.__name__}", "components": spec["components"]}
    return jsonschema.Draft202012Validator(schema)


def test_every_unsupported_field_has_a_case():
    assert set(CASES) == set(UNSUPPORTED)


@pytest.mark.parametrize("field", sorted(CASES))
def test_refused_values_are_422_material_and_outside_the_declared_schema(spec, field):
    model, base = _request(field)
    honoured, refused = CASES[field]
    model.model_validate({**base, field: honoured})
    with pytest.raises(ValidationError) as info:
        model.model_validate({**base, field: refused})
    (error,) = info.value.errors()
    assert error["loc"] == (field,) and error["msg"] == UNSUPPORTED[field][1]
    validator = _validator(spec, model)
    assert validator.is_valid({**base, field: honoured})
    assert not validator.is_valid({**base, field: refused}), f"the OpenAPI document admits {field}={refused!r}"


@pytest.mark.parametrize(
    ("model", "body"),
    [
        (CompletionRequest, {**COMPLETION, "prompt": "  "}),
        (CompletionRequest, {**COMPLETION, "prompt": ["a", "b"]}),
        (CompletionRequest, {**COMPLETION, "prompt": [1, 2]}),
        (ChatCompletionRequest, {**CHAT, "messages": []}),
        (ChatCompletionRequest, {**CHAT, "messages": [{"role": "tool", "content": "4"}]}),
        (ChatCompletionRequest, {**CHAT, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
        (ChatCompletionRequest, {**CHAT, "beam_width": 4}),
        (ChatCompletionRequest, {**CHAT, "messages": [{"role": "system", "content": "no question"}]}),
        (ChatCompletionRequest, {**CHAT, "messages": [{"role": "user"}]}),
        (ChatCompletionRequest, {**CHAT, "messages": [{"role": "user", "content": " "}]}),
        (ChatCompletionRequest, {**CHAT, "max_tokens": True}),
        (ChatCompletionRequest, {**CHAT, "max_tokens": 2.5}),
    ],
)
def test_shapes_refused_by_the_validators_are_refused_by_the_schema(spec, model, body):
    with pytest.raises(ValidationError):
        model.model_validate(body)
    assert not _validator(spec, model).is_valid(body)


def test_the_question_and_the_limits():
    chat = ChatCompletionRequest.model_validate(
        {
            **CHAT,
            "messages": [
                {"role": "system", "content": "ignored"},
                {"role": "assistant", "content": None, "refusal": None},  # echoed back from a response
                {"role": "user", "content": [{"type": "text", "text": "one part"}]},
                {"role": "assistant", "content": "The answer"},  # after the question: ignored as well
            ],
            "max_tokens": 3,
            "max_completion_tokens": 5,
            "stream_options": {"include_usage": True},  # read only when streaming
        }
    )
    solve = chat.to_solve()
    assert (solve.question, solve.max_new_tokens, solve.adapter) == ("one part", 5, "tiny")
    assert chat.include_usage() is False
    assert CompletionRequest.model_validate({**COMPLETION, "prompt": ["q"]}).to_solve().question == "q"


def test_integers_as_json_schema_counts_them(spec):
    body = {**CHAT, "max_tokens": 3.0, "n": 1.0, "seed": 7.0, "num_iterations": 0.0}
    request = ChatCompletionRequest.model_validate(body)
    assert (request.max_tokens, request.n, request.seed, request.num_iterations) == (3, 1, 7, 0)
    assert _validator(spec, ChatCompletionRequest).is_valid(body)


def test_the_chat_question_is_bounded_like_the_solve_question():
    """Every user message's text (a string or one text part) carries /v1/solve's question
    limit, since JSON Schema cannot single out the last one; other roles stay unbounded."""
    limit = 50
    doc = create_app(Settings(adapters=["tiny=/nowhere/tiny"], warmup=False, max_question_chars=limit)).openapi()
    question = doc["components"]["schemas"]["SolveRequest"]["properties"]["question"]
    assert question["maxLength"] == limit
    chat = _validator(doc, ChatCompletionRequest)

    def body(*messages: dict) -> dict:
        return {**CHAT, "messages": list(messages)}

    at, over = "9" * limit, "9" * (limit + 1)
    assert chat.is_valid(body({"role": "user", "content": at}))
    assert chat.is_valid(body({"role": "system", "content": over}, {"role": "user", "content": at}))
    assert not chat.is_valid(body({"role": "user", "content": over}))
    assert not chat.is_valid(body({"role": "user", "content": [{"type": "text", "text": over}]}))
    assert not chat.is_valid(body({"role": "user", "content": over}, {"role": "user", "content": at}))
    # ... and the server refuses what the document refuses, naming the message
    earlier = ChatCompletionRequest.model_validate(
        body({"role": "user", "content": over}, {"role": "user", "content": at})
    )
    (problem,) = earlier.problems(Settings(adapters=["tiny=/nowhere/tiny"], max_question_chars=limit))
    assert problem[0] == "messages" and f"{limit + 1} characters, the limit is {limit}" in problem[1]
