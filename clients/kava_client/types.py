"""Pydantic types of the server's responses (SERVING.md), tolerant of fields added later.

Owns the response shapes the SDK returns. Every model keeps unknown fields (`extra="allow"`)
so a newer server never breaks an older client; fields the contract marks optional default
to None. Does not own request validation: the server is the authority on limits.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "AdapterInfo",
    "BaseModelInfo",
    "Mode",
    "ModelsResponse",
    "SolveResponse",
    "Timings",
    "Usage",
]

Mode = Literal["latent", "cot"]


class _Response(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True, protected_namespaces=())


class Usage(_Response):
    """Token and compute counts of one request."""

    prompt_tokens: int = 0
    latent_tokens: int = 0  # M latent slots (0 in cot mode)
    generated_tokens: int = 0
    forward_passes: int = 0


class Timings(_Response):
    """Milliseconds spent in each phase, measured by the server."""

    queue: float = 0.0
    prefill: float = 0.0
    latent: float = 0.0
    decode: float = 0.0
    total: float = 0.0


class SolveResponse(_Response):
    """Answer to `POST /v1/solve`. `answer` is the number as a string, or None when none was found."""

    id: str
    answer: str | None = None
    text: str = ""
    mode: str = "latent"
    adapter: str | None = None
    usage: Usage = Field(default_factory=Usage)
    timings_ms: Timings = Field(default_factory=Timings)
    kv_cache_bytes: int | None = None
    latents: list[list[str]] | None = None  # nearest vocabulary tokens per latent slot, when asked for


class AdapterInfo(_Response):
    """One loaded adapter: M latent slots refined by T Jacobi iterations."""

    name: str
    base_model: str | None = None  # the base model id this adapter sits on
    num_latents: int | None = Field(default=None, validation_alias=AliasChoices("num_latents", "M", "m"))
    num_iterations: int | None = Field(default=None, validation_alias=AliasChoices("num_iterations", "T", "t"))
    dtype: str | None = None
    device: str | None = None
    default: bool = False  # the adapter a solve without `adapter=` uses

    @property
    def M(self) -> int | None:
        return self.num_latents

    @property
    def T(self) -> int | None:
        return self.num_iterations


class BaseModelInfo(_Response):
    """The base model every adapter sits on."""

    name: str = Field(validation_alias=AliasChoices("name", "id", "model"))
    dtype: str | None = None
    device: str | None = None


class ModelsResponse(_Response):
    """Answer to `GET /v1/adapters`: the base model and the adapters loaded on it."""

    base_model: BaseModelInfo | None = Field(default=None, validation_alias=AliasChoices("base_model", "base", "model"))
    default_adapter: str | None = None  # what a solve without `adapter=` uses
    adapters: list[AdapterInfo] = Field(default_factory=list, validation_alias=AliasChoices("adapters", "data"))

    @model_validator(mode="before")
    @classmethod
    def _base_model_as_string(cls, data: Any) -> Any:
        # Accept `"base_model": "name"` as well as an object, lifting top-level dtype/device into it.
        if isinstance(data, dict):
            for key in ("base_model", "base", "model"):
                if isinstance(data.get(key), str):
                    base = {"name": data[key]}
                    base.update({k: data[k] for k in ("dtype", "device") if k in data})
                    data = {**data, key: base}
                    break
        return data

    @property
    def adapter_names(self) -> list[str]:
        return [a.name for a in self.adapters]

    def adapter(self, name: str) -> AdapterInfo:
        """The adapter called `name`; KeyError lists the loaded ones."""
        for info in self.adapters:
            if info.name == name:
                return info
        raise KeyError(f"adapter {name!r} is not loaded; loaded: {self.adapter_names}")
