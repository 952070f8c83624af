"""Wire formats of the HTTP API: every request and response body, as pydantic models.

Static shape checks live here, strictly typed (`0` is not a boolean, `true` not an integer,
`"3"` not a number); the bounds that depend on the server's settings (question length,
max_new_tokens, T) are checked by `SolveRequest.problems(settings)`, so a 422 always names the
field, the problem and the limit, and `server.openapi` writes them into the OpenAPI document.
Does not own routing or status codes (`server.routes`, `server.errors`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from kava.config import Mode
from server.settings import ADAPTER_NAME, Settings


def _integral(value: object) -> object:
    """JSON's integers, as JSON Schema counts them: 3 and 3.0, never true or "3"."""
    if isinstance(value, bool):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# For strict models: 3.0 is 3, true is refused. Bounds go before it (`Annotated[int, Field(ge=1),
# INTEGRAL]`), else pydantic writes them into the JSON schema as "ge" instead of "minimum".
INTEGRAL = BeforeValidator(_integral)
JsonInt = Annotated[int, INTEGRAL]
# The OpenAPI pattern of a question: one character that is not whitespace by Python's `str.strip`
# (the check). Spelled out, not `\S`: ECMA's `\s` (JSON Schema's regex) misses \x1c-\x1f and \x85,
# which Python strips, and has \ufeff, which Python keeps (a fuzzer found "\x85" accepted by the
# schema and refused by the check).
NOT_BLANK = r"[^\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"


class SolveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    question: str = Field(min_length=1, description="one math word problem", json_schema_extra={"pattern": NOT_BLANK})
    adapter: str | None = Field(default=None, description="adapter name; the server's default when omitted")
    mode: Mode = Field(default="latent", description="latent, or cot = the same adapter writing its chain of thought")
    max_new_tokens: Annotated[int, Field(ge=1), INTEGRAL] | None = Field(
        default=None, description="answer tokens to decode at most"
    )
    num_iterations: Annotated[int, Field(ge=0), INTEGRAL] | None = Field(
        default=None, description="T override (Jacobi iterations)"
    )
    return_latents: bool = Field(default=False, description="nearest vocabulary token of each latent slot")

    @field_validator("question")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise PydanticCustomError("blank", "must contain more than whitespace")
        return value

    def problems(self, settings: Settings) -> list[tuple[str, str]]:
        """(field, message) for every settings-dependent bound this request breaks."""
        out = []
        if len(self.question) > settings.max_question_chars:
            out.append(
                (
                    "question",
                    f"question is too long: {len(self.question)} characters, the limit is "
                    f"{settings.max_question_chars} (KAVA_MAX_QUESTION_CHARS)",
                )
            )
        if self.max_new_tokens is not None and self.max_new_tokens > settings.max_new_tokens_limit:
            out.append(
                (
                    "max_new_tokens",
                    f"max_new_tokens={self.max_new_tokens} is above the limit of "
                    f"{settings.max_new_tokens_limit} (KAVA_MAX_NEW_TOKENS_LIMIT)",
                )
            )
        if self.num_iterations is not None and self.num_iterations > settings.max_num_iterations:
            out.append(
                (
                    "num_iterations",
                    f"num_iterations={self.num_iterations} is above the limit of "
                    f"{settings.max_num_iterations} (KAVA_MAX_NUM_ITERATIONS)",
                )
            )
        return out


class Usage(BaseModel):
    prompt_tokens: int
    latent_tokens: int
    generated_tokens: int
    forward_passes: int


class Timings(BaseModel):
    """Milliseconds. queue: arrival -> batch start; total: arrival -> result."""

    queue: float
    prefill: float
    latent: float
    decode: float
    total: float


class SolveResponse(BaseModel):
    id: str
    answer: str | None
    text: str
    mode: Mode
    adapter: str
    usage: Usage
    timings_ms: Timings
    kv_cache_bytes: int
    latents: list[list[str]] | None = Field(
        default=None,
        description="only when return_latents was asked: per latent slot, its nearest vocabulary tokens, "
        "best first (cosine to the input embeddings; one per slot today); null in cot mode",
    )


class AdapterCard(BaseModel):
    name: str
    base_model: str
    num_latents: int
    num_iterations: int
    dtype: str
    device: str
    default: bool


class AdapterList(BaseModel):
    """`GET /v1/adapters`: the base model, the default adapter and every loaded one with M, T."""

    base_model: str
    default_adapter: str
    adapters: list[AdapterCard]


class AdapterLoadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(pattern=ADAPTER_NAME, description="name to serve it under")
    path: str = Field(
        min_length=1,
        max_length=4096,
        description="adapter directory inside one of the server's adapter roots (absolute, or relative to a root)",
    )


class AdapterDeleted(BaseModel):
    name: str
    deleted: bool = True


class HealthResponse(BaseModel):
    """200 of `/health` ("ok") and `/ready` ("ready"); their 503 is the error envelope."""

    status: Literal["ok", "ready"]


class ErrorBody(BaseModel):
    type: str
    message: str
    param: str | None = None


class ErrorEnvelope(BaseModel):
    error: ErrorBody
