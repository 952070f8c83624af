"""Server settings: one pydantic-settings class, every field also a `KAVA_<NAME>` variable.

Owns the knobs of `kava serve` and their bounds (typed, checked at start-up, with the limit
in the error). Does not own the method's knobs (`kava.config.MethodConfig`, saved with each
adapter) nor the command line (`server.cli` maps flags onto these fields).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from kava.builtin import BUILTIN_ADAPTER, builtin_available

ADAPTER_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
BUILTIN_NAME = "builtin"


class BuiltinMissing(RuntimeError):
    """No adapter was given and the built-in one has not been built yet."""


class AdapterSpec(BaseModel):
    """One `NAME=PATH` pair; a bare PATH is named after its directory."""

    name: str = Field(pattern=ADAPTER_NAME)
    path: Path

    @classmethod
    def parse(cls, text: str) -> AdapterSpec:
        name, sep, path = text.partition("=")
        if not sep:
            path = name
            name = Path(name.rstrip("/")).name
        return cls(name=name.strip(), path=Path(path.strip()).expanduser())


class Settings(BaseSettings):
    """Everything `kava serve` can be told; CLI flags override `KAVA_*` variables."""

    model_config = SettingsConfigDict(env_prefix="KAVA_", frozen=True, extra="forbid")

    # What to serve -------------------------------------------------------------------------
    adapters: Annotated[tuple[AdapterSpec, ...], NoDecode] = Field(
        default=(), description="NAME=PATH pairs, comma-separated in KAVA_ADAPTERS; the first is the default"
    )
    base_model: str | None = Field(default=None, description="override of the base model recorded in the adapter")
    device: str = Field(default="auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    warmup: bool = True

    # Where ---------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    api_key: SecretStr | None = Field(default=None, description="required on /v1/* when set (Bearer or X-API-Key)")

    # Batching and admission ----------------------------------------------------------------
    max_batch_size: int = Field(default=32, ge=1, le=1024)
    max_wait_ms: float = Field(default=10.0, ge=0.0, le=10_000.0)
    max_queue_size: int = Field(default=256, ge=1, le=100_000)
    request_timeout_s: float = Field(default=120.0, gt=0.0, le=3600.0)
    drain_timeout_s: float = Field(default=60.0, ge=0.0, le=3600.0)
    retry_after_s: int = Field(default=1, ge=1, le=3600)

    # Per-request bounds --------------------------------------------------------------------
    max_question_chars: int = Field(default=2000, ge=1, le=100_000)
    max_new_tokens_limit: int = Field(default=1024, ge=1, le=32_768)
    max_new_tokens_latent: int = Field(default=32, ge=1, le=32_768, description="default when a request omits it")
    max_new_tokens_cot: int = Field(default=256, ge=1, le=32_768, description="default when a request omits it")
    max_num_iterations: int = Field(default=32, ge=0, le=1024)

    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("adapters", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part for part in value.split(",") if part.strip()]
        if isinstance(value, (list, tuple)):
            return tuple(AdapterSpec.parse(v) if isinstance(v, str) else v for v in value)
        return value

    @field_validator("adapters")
    @classmethod
    def _unique(cls, value: tuple[AdapterSpec, ...]) -> tuple[AdapterSpec, ...]:
        names = [a.name for a in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"adapter names must be unique; repeated: {dupes}")
        return value

    def default_max_new_tokens(self, mode: str) -> int:
        limit = self.max_new_tokens_cot if mode == "cot" else self.max_new_tokens_latent
        return min(limit, self.max_new_tokens_limit)

    def served_adapters(self) -> tuple[AdapterSpec, ...]:
        """The adapters to load: the given ones, else the built-in model (if it exists)."""
        if self.adapters:
            return self.adapters
        if not builtin_available():
            raise BuiltinMissing(
                f"the built-in model is not built yet (nothing at {BUILTIN_ADAPTER}). Build it with "
                "`python -m training.builtin`, or serve your own adapter with "
                "`kava serve --adapter NAME=PATH` (or KAVA_ADAPTERS=NAME=PATH)."
            )
        return (AdapterSpec(name=BUILTIN_NAME, path=BUILTIN_ADAPTER),)


def redact(settings: Settings) -> dict[str, object]:
    """Settings as loggable values (the API key shows only whether it is set)."""
    out = settings.model_dump(mode="json")
    out["api_key"] = "<set>" if settings.api_key else None
    return out
