"""Method and LoRA configuration: two frozen dataclasses, validated on construction.

Owns every knob of the KaVa method (METHOD.md §1-§4) and of the LoRA wrapper, and their
JSON round trip. Does not own training-loop settings (optimizer, data), which live in
`training/`, nor server settings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

Objective = Literal["kava", "pccot", "codi", "cot", "nocot"]
Eviction = Literal["rkv", "importance", "redundancy", "crop"]
DistillLoss = Literal["smooth_l1", "l1", "mse"]
KVLoss = Literal["smooth_l1", "mse"]
KeySpace = Literal["post_rope", "pre_rope"]
KVReduction = Literal["mean", "sum"]
Mode = Literal["latent", "cot"]  # inference: latent reasoning, or the same adapter writing its CoT

OBJECTIVES: tuple[str, ...] = ("kava", "pccot", "codi", "cot", "nocot")
EVICTIONS: tuple[str, ...] = ("rkv", "importance", "redundancy", "crop")
DISTILL_LOSSES: tuple[str, ...] = ("smooth_l1", "l1", "mse")
KV_LOSSES: tuple[str, ...] = ("smooth_l1", "mse")
KEY_SPACES: tuple[str, ...] = ("post_rope", "pre_rope")
KV_REDUCTIONS: tuple[str, ...] = ("mean", "sum")
MODES: tuple[str, ...] = ("latent", "cot")


class ConfigError(ValueError):
    """A configuration value is out of range; the message lists every problem found."""


def _check(problems: list[str], ok: bool, message: str) -> None:
    if not ok:
        problems.append(message)


def _from_dict(cls, data: dict[str, Any]):
    """Build a config dataclass from JSON data, refusing unknown fields by name."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s) {unknown}; known fields: {sorted(known)}")
    return cls(**data)


@dataclass(frozen=True)
class MethodConfig:
    """Every choice of the KaVa method; one instance travels with each adapter.

    `objective` selects which loss terms exist and how the student reasons:
    kava = student + teacher CE + CODI + KV; pccot = no KV; codi = sequential latents
    (one latent per forward pass); cot = teacher CE only; nocot = answer right after Q.
    """

    objective: Objective = "kava"
    num_latents: int = 24  # M
    num_iterations: int = 3  # T: Jacobi update passes after the init pass
    use_projection: bool = True
    answer_prompt: str = "The answer is:"
    drop_last_step: bool = True
    student_ce_weight: float = 1.0  # w_s
    teacher_ce_weight: float = 1.0  # w_t
    codi_weight: float = 10.0  # alpha_1
    kv_weight: float = 1.0  # alpha_2
    codi_loss: DistillLoss = "smooth_l1"
    codi_layerwise_std: bool = True
    kv_loss: KVLoss = "smooth_l1"
    kv_layerwise_std: bool = True
    eviction: Eviction = "rkv"
    eviction_lambda: float = 0.1
    kv_key_space: KeySpace = "post_rope"
    kv_reduction: KVReduction = "mean"  # "sum" is the paper's formula; its alpha_2 must be retuned (METHOD.md §4)
    step_weight: float = 0.0  # alpha_3: step supervision (SIM-CoT-style), 0 = off (the paper's objective)

    def __post_init__(self) -> None:
        p: list[str] = []
        _check(p, self.objective in OBJECTIVES, f"objective={self.objective!r}: must be one of {OBJECTIVES}")
        _check(
            p,
            isinstance(self.num_latents, int) and self.num_latents > 0,
            f"num_latents={self.num_latents!r}: must be an integer >= 1 (M latent slots)",
        )
        _check(
            p,
            isinstance(self.num_iterations, int) and self.num_iterations >= 0,
            f"num_iterations={self.num_iterations!r}: must be an integer >= 0 (T Jacobi iterations)",
        )
        _check(
            p,
            isinstance(self.answer_prompt, str) and self.answer_prompt.strip() != "",
            f"answer_prompt={self.answer_prompt!r}: must be a non-empty string",
        )
        for name in ("student_ce_weight", "teacher_ce_weight", "codi_weight", "kv_weight", "step_weight"):
            v = getattr(self, name)
            _check(p, isinstance(v, (int, float)) and v >= 0, f"{name}={v!r}: must be a number >= 0")
        _check(p, self.codi_loss in DISTILL_LOSSES, f"codi_loss={self.codi_loss!r}: must be one of {DISTILL_LOSSES}")
        _check(p, self.kv_loss in KV_LOSSES, f"kv_loss={self.kv_loss!r}: must be one of {KV_LOSSES}")
        _check(p, self.eviction in EVICTIONS, f"eviction={self.eviction!r}: must be one of {EVICTIONS}")
        lam = self.eviction_lambda
        _check(p, isinstance(lam, (int, float)) and 0.0 <= lam <= 1.0, f"eviction_lambda={lam!r}: must be in [0, 1]")
        red = self.kv_reduction
        _check(p, red in KV_REDUCTIONS, f"kv_reduction={red!r}: must be one of {KV_REDUCTIONS}")
        _check(p, self.kv_key_space in KEY_SPACES, f"kv_key_space={self.kv_key_space!r}: must be one of {KEY_SPACES}")
        if p:
            raise ConfigError("invalid MethodConfig: " + "; ".join(p))

    # What the objective implies -------------------------------------------------------
    @property
    def uses_latents(self) -> bool:
        return self.objective in ("kava", "pccot", "codi")

    @property
    def sequential(self) -> bool:
        """CODI-style: one latent per forward pass instead of Jacobi iterations."""
        return self.objective == "codi"

    @property
    def uses_kv_loss(self) -> bool:
        return self.objective == "kava" and self.kv_weight > 0

    @property
    def uses_codi_loss(self) -> bool:
        return self.uses_latents and self.codi_weight > 0

    @property
    def uses_step_loss(self) -> bool:
        """Step supervision: latent slot j_k alone decodes trace step k (`kava.prompts.step_slots`)."""
        return self.uses_latents and self.step_weight > 0

    @property
    def uses_trace(self) -> bool:
        """Whether the teacher sequence carries the CoT trace (nocot drops it)."""
        return self.objective != "nocot"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MethodConfig:
        return _from_dict(cls, data)

    def replace(self, **changes: Any) -> MethodConfig:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class LoraSettings:
    """LoRA wrapper settings (METHOD.md §4 defaults). `target_modules="all-linear"` lets
    peft find every attention and MLP projection in any family (GPT-2's Conv1D included)."""

    r: int = 128
    alpha: int = 32
    dropout: float = 0.1
    target_modules: tuple[str, ...] | str = "all-linear"
    enabled: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        p: list[str] = []
        _check(p, isinstance(self.r, int) and self.r > 0, f"lora.r={self.r!r}: must be an integer >= 1")
        _check(p, isinstance(self.alpha, (int, float)) and self.alpha > 0, f"lora.alpha={self.alpha!r}: must be > 0")
        _check(
            p,
            isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0,
            f"lora.dropout={self.dropout!r}: must be in [0, 1)",
        )
        tm = self.target_modules
        _check(
            p,
            (isinstance(tm, str) and tm != "") or (isinstance(tm, (tuple, list)) and len(tm) > 0),
            f"lora.target_modules={tm!r}: must be 'all-linear' or a non-empty list of module names",
        )
        if p:
            raise ConfigError("invalid LoraSettings: " + "; ".join(p))
        if isinstance(tm, list):
            object.__setattr__(self, "target_modules", tuple(tm))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["target_modules"] = (
            list(self.target_modules) if not isinstance(self.target_modules, str) else self.target_modules
        )
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoraSettings:
        return _from_dict(cls, data)
