"""Wire formats of the OpenAI-compatible routes, as pydantic models.

Requests use OpenAI's field names and turn into the one `SolveRequest` the solve path runs
(`to_solve`): `model` is the adapter, the question is the prompt (completions) or the last
user message (chat; every other message, before or after it, is read and ignored — the
adapters were trained on bare questions, with no chat template and no memory of turns).
kava's own knobs (`mode`, `num_iterations`, `return_latents`) are extra body fields
(`extra_body=` in the openai package). The schema declares exactly what the server honours:
a field it cannot honour (n > 1, sampling, penalties, stop sequences, tools, logprobs,
non-text content, ...) accepts only the value that asks for nothing, and any other value is a
422 naming the field and the reason (`UNSUPPORTED`); unknown fields are refused the same way.
Responses are OpenAI's shapes plus a `kava` object with what the answer cost. Does not own
routing or streaming (`server.openai_routes`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
)
from pydantic_core import PydanticCustomError

from server.schemas import INTEGRAL, NOT_BLANK, JsonInt, Mode, SolveRequest, Timings
from server.settings import Settings

FinishReason = Literal["stop", "length"]


def _not_blank(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        raise PydanticCustomError("blank", "must contain more than whitespace")
    return value


# question text: not blank, by Python's `str.strip` (the check) and NOT_BLANK (the schema)
QuestionText = Annotated[
    str, Field(min_length=1, json_schema_extra={"pattern": NOT_BLANK}), BeforeValidator(_not_blank)
]

_GREEDY = "decoding is greedy (argmax: one deterministic answer)"
_NO_TOOLS = "this server answers math questions and calls no tools"
_TEXT_ONLY = "the server returns text only"
# field -> (the values this server honours, why others are refused). Checked on the raw value,
# before the declared type, so the 422 explains itself; the declared types admit the same set.
UNSUPPORTED: dict[str, tuple[Any, str]] = {
    "n": (lambda v: v == 1, f"only n=1 is supported: {_GREEDY}, so every choice would be the same"),
    "best_of": (lambda v: v == 1, f"only best_of=1 is supported: {_GREEDY}"),
    "temperature": (lambda v: v == 0, f"only temperature=0 (or leaving it out) is supported: {_GREEDY}"),
    "presence_penalty": (lambda v: v == 0, f"penalties are not supported: {_GREEDY}; send 0 or leave it out"),
    "frequency_penalty": (lambda v: v == 0, f"penalties are not supported: {_GREEDY}; send 0 or leave it out"),
    "logit_bias": (lambda v: v == {}, f"logit_bias is not supported: {_GREEDY}"),
    "stop": (lambda v: v == [], "stop sequences are not supported: the answer ends at end-of-sequence or max_tokens"),
    "logprobs": (lambda v: v is False, f"logprobs are not supported: {_TEXT_ONLY}"),
    "top_logprobs": (lambda v: v == 0, f"logprobs are not supported: {_TEXT_ONLY}"),
    "echo": (lambda v: v is False, "echo is not supported: the response holds the completion only"),
    "suffix": (lambda v: False, "suffix (insertion) is not supported"),
    "tools": (lambda v: v == [], f"tools are not supported: {_NO_TOOLS}"),
    "functions": (lambda v: v == [], f"functions are not supported: {_NO_TOOLS}"),
    "tool_choice": (lambda v: v == "none", f"only tool_choice='none' is supported: {_NO_TOOLS}"),
    "function_call": (lambda v: v == "none", f"only function_call='none' is supported: {_NO_TOOLS}"),
    "response_format": (
        lambda v: v == {"type": "text"},
        "only response_format {'type': 'text'} is supported: answers are plain text",
    ),
}


def _refuse_unsupported(value: Any, info: ValidationInfo) -> Any:
    ok, why = UNSUPPORTED[info.field_name]
    if value is not None and not ok(value):
        raise PydanticCustomError("unsupported", why)
    return value


def _unsupported(*fields: str):
    return field_validator(*fields, mode="before")(_refuse_unsupported)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    include_usage: bool = Field(default=False, description="send a last chunk with usage (and no choices)")


class TextFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["text"]


class _OpenAIRequest(BaseModel):
    """What chat and completions requests share."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(min_length=1, description="adapter name, as listed by GET /v1/models")
    max_tokens: Annotated[int, Field(ge=1), INTEGRAL] | None = Field(
        default=None, description="answer tokens to decode at most"
    )
    stream: bool = Field(default=False, description="send the answer as server-sent events")
    stream_options: StreamOptions | None = Field(default=None, description="read only with stream: true")
    # kava's knobs: extra body fields
    mode: Mode = Field(default="latent", description="kava: latent, or cot = the same adapter writing its CoT")
    num_iterations: Annotated[int, Field(ge=0), INTEGRAL] | None = Field(
        default=None, description="kava: T override (Jacobi iterations)"
    )
    return_latents: bool = Field(default=False, description="kava: nearest vocabulary token of each latent slot")
    # accepted, with no effect under greedy decoding
    top_p: float | None = Field(default=None, gt=0, le=1, description="accepted; no effect (greedy decoding)")
    seed: JsonInt | None = Field(default=None, description="accepted; no effect (greedy decoding is deterministic)")
    user: str | None = Field(default=None, description="accepted and ignored")
    # only the value that asks for what greedy decoding does anyway (see UNSUPPORTED)
    n: Annotated[int, Field(ge=1, le=1), INTEGRAL] | None = Field(default=None, description="must be 1")
    temperature: float | None = Field(default=None, ge=0, le=0, description="must be 0 (greedy decoding)")
    presence_penalty: float | None = Field(default=None, ge=0, le=0, description="must be 0")
    frequency_penalty: float | None = Field(default=None, ge=0, le=0, description="must be 0")
    logit_bias: dict[str, float] | None = Field(default=None, max_length=0, description="must be empty")
    stop: list[str] | None = Field(default=None, max_length=0, description="must be empty")

    _refused = _unsupported("n", "temperature", "presence_penalty", "frequency_penalty", "logit_bias", "stop")

    def answer_limit(self) -> int | None:
        return self.max_tokens

    def question(self) -> str:
        raise NotImplementedError

    def include_usage(self) -> bool:
        return self.stream and self.stream_options is not None and self.stream_options.include_usage

    def to_solve(self) -> SolveRequest:
        """The request the solve path runs. Raises pydantic's ValidationError if the
        question breaks a static rule of `SolveRequest`."""
        return SolveRequest(
            question=self.question(),
            adapter=self.model,
            mode=self.mode,
            max_new_tokens=self.answer_limit(),
            num_iterations=self.num_iterations,
            return_latents=self.return_latents,
        )


# Chat messages -----------------------------------------------------------------------------
class TextPart(BaseModel):
    model_config = ConfigDict(strict=True)  # other keys (e.g. cache hints) are ignored

    type: Literal["text"]
    text: str


class QuestionPart(TextPart):
    text: QuestionText


class UserMessage(BaseModel):
    """A user turn. The last one is the question: a string, or a list of one text part."""

    model_config = ConfigDict(extra="allow", strict=True)

    role: Literal["user"]
    content: QuestionText | Annotated[list[QuestionPart], Field(min_length=1, max_length=1)] = Field(
        description="the question, when this is the last user message: a string, or a list of one text part"
    )
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else self.content[0].text


class OtherMessage(BaseModel):
    """A system, developer or assistant turn: read and ignored. Extra fields are allowed: an
    assistant message echoed back from a response carries refusal, annotations, ... (null)."""

    model_config = ConfigDict(extra="allow", strict=True)

    role: Literal["system", "developer", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None


Message = Annotated[UserMessage | OtherMessage, Field(discriminator="role")]
ROLES = ("user", "system", "developer", "assistant")


def _message_problem(message: Any) -> str | None:
    """What is wrong with one raw message, said plainly (before the tagged union's own errors)."""
    if not isinstance(message, dict):
        return None
    role, content = message.get("role"), message.get("content")
    if role in ("tool", "function"):
        return f"{role} messages are not supported: {_NO_TOOLS}"
    if role not in ROLES:
        return f"role must be one of {', '.join(map(repr, ROLES))} (got {role!r})"
    for part in content if isinstance(content, list) else ():
        if isinstance(part, dict) and part.get("type", "text") != "text":
            return f"only text content is supported, got a {part['type']!r} part"
    if role != "user":
        return None
    text = content[0].get("text") if isinstance(content, list) and content and isinstance(content[0], dict) else content
    if isinstance(content, list) and len(content) != 1:
        return f"send the question as a string or as one text part (got {len(content)} parts)"
    if not isinstance(text, str):
        return "a user message needs content: a string, or a list of one text part {'type': 'text', 'text': '...'}"
    if not text.strip():
        return "a user message must contain more than whitespace"
    return None


_HAS_A_USER_MESSAGE = {"contains": {"type": "object", "properties": {"role": {"const": "user"}}, "required": ["role"]}}


class ChatCompletionRequest(_OpenAIRequest):
    messages: list[Message] = Field(
        min_length=1,
        json_schema_extra=_HAS_A_USER_MESSAGE,
        description="the question is the last user message; every other message (system, developer, assistant, "
        "before or after it) is ignored: the adapters were trained on bare questions, with no chat template "
        "and no memory of earlier turns",
    )
    max_completion_tokens: Annotated[int, Field(ge=1), INTEGRAL] | None = Field(
        default=None, description="answer tokens to decode at most; wins over max_tokens when both are sent"
    )
    logprobs: Literal[False] | None = Field(default=None, description="must be false")
    top_logprobs: Annotated[int, Field(ge=0, le=0), INTEGRAL] | None = Field(default=None, description="must be 0")
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=0, description="must be empty")
    tool_choice: Literal["none"] | None = Field(default=None, description="must be 'none'")
    parallel_tool_calls: bool | None = Field(default=None, description="accepted; no effect without tools")
    functions: list[dict[str, Any]] | None = Field(default=None, max_length=0, description="must be empty")
    function_call: Literal["none"] | None = Field(default=None, description="must be 'none'")
    response_format: TextFormat | None = Field(default=None, description="must be {'type': 'text'}")

    _chat_refused = _unsupported(
        "logprobs", "top_logprobs", "tools", "tool_choice", "functions", "function_call", "response_format"
    )

    @field_validator("messages", mode="before")
    @classmethod
    def _plain_messages(cls, value: Any) -> Any:
        for i, message in enumerate(value if isinstance(value, list) else ()):
            if (problem := _message_problem(message)) is not None:
                raise PydanticCustomError("message", f"message {i}: {problem}")
        return value

    @field_validator("messages")
    @classmethod
    def _has_a_question(cls, value: list[UserMessage | OtherMessage]) -> list[UserMessage | OtherMessage]:
        if not any(isinstance(m, UserMessage) for m in value):
            raise PydanticCustomError("no_question", "must include a user message: the last one is the question")
        return value

    def answer_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def question(self) -> str:
        return next(m for m in reversed(self.messages) if isinstance(m, UserMessage)).text()

    def problems(self, settings: Settings) -> list[tuple[str, str]]:
        """(field, message) for each user message before the question that is longer than a
        question may be. Only the last user message is read (the solve path checks it), but the
        OpenAPI document bounds every user message's text, since JSON Schema cannot single out
        the last one; so the server refuses what the document refuses."""
        limit = settings.max_question_chars
        users = [(i, m.text()) for i, m in enumerate(self.messages) if isinstance(m, UserMessage)]
        return [
            (
                "messages",
                f"message {i}: a user message is too long: {len(text)} characters, the limit is {limit} "
                "(KAVA_MAX_QUESTION_CHARS), as for the question (the last user message)",
            )
            for i, text in users[:-1]
            if len(text) > limit
        ]


class CompletionRequest(_OpenAIRequest):
    prompt: QuestionText | Annotated[list[QuestionText], Field(min_length=1, max_length=1)] = Field(
        description="the question: one string, or a list holding one string"
    )
    best_of: Annotated[int, Field(ge=1, le=1), INTEGRAL] | None = Field(default=None, description="must be 1")
    echo: Literal[False] | None = Field(default=None, description="must be false")
    logprobs: None = Field(default=None, description="must be left out")
    suffix: None = Field(default=None, description="must be left out")

    _completion_refused = _unsupported("best_of", "echo", "logprobs", "suffix")

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_question(cls, value: Any) -> Any:
        if isinstance(value, list) and len(value) != 1:
            raise PydanticCustomError(
                "one_prompt",
                f"send one prompt per request (got {len(value)}); concurrent requests are batched by the server",
            )
        text = value[0] if isinstance(value, list) else value
        if not isinstance(text, str):
            shape = "must be a string, or a list holding one string (token ids are not read)"
            raise PydanticCustomError("prompt", shape)
        _not_blank(text)
        return value

    def question(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


# Responses ---------------------------------------------------------------------------------
class CompletionUsage(BaseModel):
    prompt_tokens: int = Field(description="question tokens the model read")
    completion_tokens: int = Field(description="tokens written (in cot mode, the chain of thought included)")
    total_tokens: int


class KavaCosts(BaseModel):
    """The `kava` extension object: what the answer cost, for comparing latent with CoT."""

    request_id: str
    mode: Mode
    answer: str | None = Field(description="the number extracted from the text, or null")
    latent_tokens: int = Field(description="M continuous latent slots (0 in cot mode); not in completion_tokens")
    forward_passes: int
    kv_cache_bytes: int = Field(description="KV-cache bytes this request held at its peak")
    timings_ms: Timings
    latents: list[list[str]] | None = Field(
        description="with return_latents: the nearest vocabulary token of each latent slot; else null"
    )


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatMessageOut
    finish_reason: FinishReason
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: CompletionUsage
    kava: KavaCosts


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: FinishReason | None
    logprobs: None = None


class Completion(BaseModel):
    """`text_completion`, whole (usage and kava set) or as a stream chunk (None until the end)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage | None
    kava: KavaCosts | None


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer(mode="wrap")
    def _without_nulls(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}  # OpenAI's deltas: {"content": "..."}


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: CompletionUsage | None = None
    kava: KavaCosts | None = None


class Model(BaseModel):
    id: str = Field(description="adapter name: the `model` of a completion request")
    object: Literal["model"] = "model"
    created: int = Field(description="Unix time this server first listed the adapter")
    owned_by: str = "kava"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]
