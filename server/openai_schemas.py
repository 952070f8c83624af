"""Wire formats of the OpenAI-compatible routes, as pydantic models.

Requests use OpenAI's field names and turn into the one `SolveRequest` the solve path runs
(`to_solve`): `model` is the adapter, the question is the prompt (completions) or the last
user message (chat; system, developer and earlier messages are read and ignored — the
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
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
)
from pydantic_core import PydanticCustomError

from server.schemas import Mode, SolveRequest, Timings

FinishReason = Literal["stop", "length"]
Question = Annotated[str, Field(pattern=r"\S")]  # not blank, said in the schema too

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
    max_tokens: int | None = Field(default=None, ge=1, description="answer tokens to decode at most")
    stream: bool = Field(default=False, description="send the answer as server-sent events")
    stream_options: StreamOptions | None = Field(default=None, description="read only with stream: true")
    # kava's knobs: extra body fields
    mode: Mode = Field(default="latent", description="kava: latent, or cot = the same adapter writing its CoT")
    num_iterations: int | None = Field(default=None, ge=0, description="kava: T override (Jacobi iterations)")
    return_latents: bool = Field(default=False, description="kava: nearest vocabulary token of each latent slot")
    # accepted, with no effect under greedy decoding
    top_p: float | None = Field(default=None, gt=0, le=1, description="accepted; no effect (greedy decoding)")
    seed: int | None = Field(default=None, description="accepted; no effect (greedy decoding is deterministic)")
    user: str | None = Field(default=None, description="accepted and ignored")
    # only the value that asks for what greedy decoding does anyway (see UNSUPPORTED)
    n: int | None = Field(default=None, ge=1, le=1, description="must be 1")
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


class TextPart(BaseModel):
    model_config = ConfigDict(strict=True)  # other keys (e.g. cache hints) are ignored

    type: Literal["text"]
    text: str


def _text(content: str | list[TextPart] | None) -> str:
    """A message's text: a string, or its text parts joined by newlines."""
    if content is None or isinstance(content, str):
        return content or ""
    return "\n".join(part.text for part in content)


class ChatMessage(BaseModel):
    # extra fields allowed: an assistant message echoed back from a response carries
    # refusal, annotations, audio, ... (all null), and assistant messages are ignored anyway
    model_config = ConfigDict(extra="allow", strict=True)

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    @field_validator("role", mode="before")
    @classmethod
    def _no_tool_turns(cls, value: Any) -> Any:
        if value in ("tool", "function"):
            raise PydanticCustomError("unsupported", f"{value} messages are not supported: {_NO_TOOLS}")
        return value

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts_only(cls, value: Any) -> Any:
        # one clear message instead of an error per branch of the union
        if value is None or isinstance(value, str):
            return value
        shape = "must be a string or a list of text parts {'type': 'text', 'text': '...'}"
        if not isinstance(value, list):
            raise PydanticCustomError("content", shape)
        for part in value:
            if isinstance(part, dict) and part.get("type") not in ("text", None):
                why = f"only text content parts are supported, got type {part['type']!r}"
                raise PydanticCustomError("unsupported", why)
            if not (isinstance(part, dict) and isinstance(part.get("text"), str)):
                raise PydanticCustomError("content", shape)
        return value


class ChatCompletionRequest(_OpenAIRequest):
    messages: list[ChatMessage] = Field(
        min_length=1,
        description="the last message must be the user's question; system, developer and earlier messages "
        "are ignored (the adapters were trained on bare questions)",
    )
    max_completion_tokens: int | None = Field(
        default=None, ge=1, description="answer tokens to decode at most; wins over max_tokens when both are sent"
    )
    logprobs: Literal[False] | None = Field(default=None, description="must be false")
    top_logprobs: int | None = Field(default=None, ge=0, le=0, description="must be 0")
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=0, description="must be empty")
    tool_choice: Literal["none"] | None = Field(default=None, description="must be 'none'")
    parallel_tool_calls: bool | None = Field(default=None, description="accepted; no effect without tools")
    functions: list[dict[str, Any]] | None = Field(default=None, max_length=0, description="must be empty")
    function_call: Literal["none"] | None = Field(default=None, description="must be 'none'")
    response_format: TextFormat | None = Field(default=None, description="must be {'type': 'text'}")

    _chat_refused = _unsupported(
        "logprobs", "top_logprobs", "tools", "tool_choice", "functions", "function_call", "response_format"
    )

    @field_validator("messages")
    @classmethod
    def _ends_with_a_question(cls, value: list[ChatMessage]) -> list[ChatMessage]:
        last = value[-1]
        if last.role != "user":
            raise PydanticCustomError(
                "last_message",
                f"the last message must be the user's question (got role {last.role!r}); "
                "continuing an assistant message is not supported",
            )
        if not _text(last.content).strip():
            raise PydanticCustomError("blank", "the last user message must contain more than whitespace")
        return value

    def answer_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def question(self) -> str:
        return _text(self.messages[-1].content)


class CompletionRequest(_OpenAIRequest):
    prompt: Question | Annotated[list[Question], Field(min_length=1, max_length=1)] = Field(
        description="the question: one string, or a list holding one string"
    )
    best_of: int | None = Field(default=None, ge=1, le=1, description="must be 1")
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
        if not text.strip():  # before the pattern below, for a message that says what is wrong
            raise PydanticCustomError("blank", "must contain more than whitespace")
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
