"""Server settings: one pydantic-settings class, every field also a `KAVA_<NAME>` variable.

Owns the knobs of `kava serve` and their bounds (typed, checked at start-up, with the limit
in the error); every field's description is its `--flag` help. Does not own the method's knobs
(`kava.config.MethodConfig`, saved with each adapter) nor the command line (`server.cli`
generates one flag per field). Imports nothing heavy (no torch), so `kava serve --help` is
instant: the built-in model's location is looked up only when it is needed.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ADAPTER_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
BUILTIN_NAME = "builtin"

log = logging.getLogger(__name__)


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
        default=(),
        description="adapter to serve as NAME=PATH (repeatable; comma-separated in KAVA_ADAPTERS); the first is "
        "the default. Default: the built-in model",
    )
    adapter_dir: Path | None = Field(
        default=None,
        description="serve every adapter folder inside this directory (one holding kava_config.json) under its "
        "folder name, after the --adapter ones. The image sets /models",
    )
    base_model: str | None = Field(default=None, description="base model id or directory, overriding the adapter's")
    device: str = Field(default="auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$", description="auto, cpu, cuda, cuda:N")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(default="auto", description="weights' dtype")
    warmup: bool = Field(default=True, description="run one short solve per mode before /ready turns 200")
    cuda_graphs: bool = Field(
        default=False,
        description="run passes where every request adds as many tokens (decode, Jacobi) as CUDA graphs, one "
        "capture per batch bucket and width (a CUDA device; on CPU the same fixed shapes, no capture)",
    )

    # Where, and who may ---------------------------------------------------------------------
    host: str = Field(default="127.0.0.1", description="interface to listen on")
    port: int = Field(default=8000, ge=0, le=65535, description="port to listen on")
    api_key: SecretStr | None = Field(
        default=None,
        description="require this key on /v1/* (Authorization: Bearer or X-API-Key); prefer the variable",
    )
    admin_api_key: SecretStr | None = Field(
        default=None,
        description="require this key (instead of --api-key) on POST/DELETE /v1/adapters; prefer the variable",
    )
    adapter_roots: Annotated[tuple[Path, ...], NoDecode] = Field(
        default=(),
        description="directory that POST /v1/adapters may load from (repeatable; comma-separated in "
        "KAVA_ADAPTER_ROOTS). Loading and unloading at run time are off unless one is set",
    )
    max_body_bytes: int = Field(
        default=1 << 20, ge=1024, le=64 << 20, description="largest request body accepted, in bytes (else 413)"
    )

    # Batching and admission ----------------------------------------------------------------
    max_batch_size: int = Field(default=32, ge=1, le=1024, description="requests per batch at most")
    max_wait_ms: float = Field(
        default=10.0, ge=0.0, le=10_000.0, description="how long the oldest request waits for a fuller batch"
    )
    max_queue_size: int = Field(default=256, ge=1, le=100_000, description="waiting requests before 503")
    request_timeout_s: float = Field(default=120.0, gt=0.0, le=3600.0, description="deadline per request (504)")
    drain_timeout_s: float = Field(
        default=60.0, ge=0.0, le=3600.0, description="grace period for queued and running work on SIGTERM"
    )
    retry_after_s: int = Field(default=1, ge=1, le=3600, description="Retry-After sent with a 503")

    # Per-request bounds --------------------------------------------------------------------
    max_question_chars: int = Field(
        default=2000,
        ge=1,
        le=100_000,
        description="longest question in characters (the model's context, counted in tokens, is checked as well)",
    )
    max_new_tokens_limit: int = Field(
        default=1024, ge=1, le=32_768, description="largest max_new_tokens a request may ask"
    )
    max_new_tokens_latent: int = Field(
        default=32, ge=1, le=32_768, description="max_new_tokens of a latent request that omits it"
    )
    max_new_tokens_cot: int = Field(
        default=256, ge=1, le=32_768, description="max_new_tokens of a cot request that omits it"
    )
    max_num_iterations: int = Field(
        default=32, ge=0, le=1024, description="largest num_iterations (T) a request may ask"
    )

    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(default="info", description="log level")

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

    @field_validator("adapter_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(Path(part.strip()).expanduser() for part in value.split(",") if part.strip())
        return value

    @field_validator("adapter_roots")
    @classmethod
    def _roots_exist(cls, value: tuple[Path, ...]) -> tuple[Path, ...]:
        missing = [str(p) for p in value if not p.is_dir()]
        if missing:
            raise ValueError(f"adapter roots must be existing directories; not one: {missing}")
        return value

    @field_validator("adapter_dir", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value  # KAVA_ADAPTER_DIR= (set but empty) means none, not "."

    @field_validator("adapter_dir")
    @classmethod
    def _dir_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(f"the adapter directory must be an existing directory; {str(value)!r} is not one")
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

    @property
    def runtime_adapters(self) -> bool:
        """Whether POST/DELETE /v1/adapters are on (only with an adapter root to load from)."""
        return bool(self.adapter_roots)

    def served_adapters(self) -> tuple[AdapterSpec, ...]:
        """The adapters to load: the given ones, then those found in `adapter_dir` (a given
        name wins), else the built-in model (if it exists). The first one is the default."""
        given = {a.name for a in self.adapters}
        found = adapters_in(self.adapter_dir) if self.adapter_dir is not None else ()
        adapters = self.adapters + tuple(a for a in found if a.name not in given)
        if adapters:
            return adapters
        from kava import builtin  # here, not at import: it loads torch

        if not builtin.builtin_available():
            raise BuiltinMissing(
                f"the built-in model is not built yet (nothing at {builtin.BUILTIN_ADAPTER}). Build it with "
                "`python -m training.builtin`, or serve your own adapter with "
                "`kava serve --adapter NAME=PATH` (or KAVA_ADAPTERS=NAME=PATH)."
            )
        return (AdapterSpec(name=BUILTIN_NAME, path=builtin.BUILTIN_ADAPTER),)


def adapters_in(directory: Path) -> tuple[AdapterSpec, ...]:
    """Every adapter folder directly inside `directory` (one holding kava_config.json), named
    by its folder, in name order. Other entries are not adapters and are passed over; a
    folder whose name is not a valid adapter name is passed over with a warning."""
    from kava.adapters import KAVA_CONFIG  # here, not at import: it loads torch

    found = []
    for path in sorted(directory.iterdir()):
        if not (path / KAVA_CONFIG).is_file():
            continue
        if re.fullmatch(ADAPTER_NAME, path.name) is None:
            log.warning("not serving %s: the folder name is not an adapter name (%s); rename it", path, ADAPTER_NAME)
            continue
        found.append(AdapterSpec(name=path.name, path=path))
    log.info("adapters found in %s: %s", directory, [a.name for a in found] or "none")
    return tuple(found)


def redact(settings: Settings) -> dict[str, object]:
    """Settings as loggable values (the API keys show only whether they are set)."""
    out = settings.model_dump(mode="json")
    out["api_key"] = "<set>" if settings.api_key else None
    out["admin_api_key"] = "<set>" if settings.admin_api_key else None
    return out
