"""The resume rules: when a run may continue from a checkpoint, and with which settings.

Resuming is explicit: an output directory that holds a checkpoint is refused unless the
run asks to resume (`resume: auto` in the config, `kava train --resume`). A resumed run
must carry the settings it was saved with; every differing field is named. Fields that
do not change what is trained on or how the optimizer state is read (how long, how often
to log/save/evaluate, the evaluation itself, trackers, where the run lives) may change
with `--override-resume`, and each accepted change is logged. Everything else (lr, data,
method, LoRA shape, ...) is refused even then: start a new output_dir. Does not own
reading or writing checkpoints (`training.checkpoint`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kava.config import ConfigError
from training.checkpoint import latest_checkpoint, read_state

log = logging.getLogger(__name__)

POLICIES = ("never", "auto")  # never: refuse an output_dir with a checkpoint; auto: resume its newest
NOT_COMPARED = frozenset({"resume"})
# dotted names, or a section prefix ending in "." (every field under it)
SAFE_TO_CHANGE = (
    "optim.max_steps",  # the cosine schedule is recomputed for the new total from the current step
    "optim.max_minutes",  # likewise: a new time budget, the time already spent kept
    "optim.log_every",
    "optim.save_every",
    "optim.eval_every",
    "optim.keep_last",
    "optim.gradient_checkpointing",  # same numbers, less memory
    "optim.mixed_precision",
    "eval.",
    "data.eval",
    "data.num_eval",
    "report_to",
    "output_dir",
    "device",
)

_SAFE_NAMES = ", ".join(s + "*" if s.endswith(".") else s for s in SAFE_TO_CHANGE)


class ResumeError(ConfigError):
    """The output directory's checkpoint cannot be resumed (or must not be overwritten) as asked."""


@dataclass(frozen=True)
class Change:
    field: str
    saved: Any
    new: Any

    @property
    def safe(self) -> bool:
        return any(self.field == s or (s.endswith(".") and self.field.startswith(s)) for s in SAFE_TO_CHANGE)

    def __str__(self) -> str:
        return f"{self.field}: saved {self.saved!r}, now {self.new!r}"


@dataclass(frozen=True)
class ResumePlan:
    checkpoint: Path
    step: int
    accepted: list[Change] = field(default_factory=list)  # changed with --override-resume


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 1}} -> {"optim.lr": 1}; lists and tuples compare as lists."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out |= flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def config_changes(saved: dict[str, Any], new: dict[str, Any]) -> tuple[list[Change], list[str]]:
    """Fields whose values differ, and fields recorded on one side only (an older or newer
    version of the config: named, not refused)."""
    a, b = flatten(saved), flatten(new)
    compared = [k for k in sorted(a.keys() & b.keys()) if k.split(".")[0] not in NOT_COMPARED]
    changes = [Change(k, a[k], b[k]) for k in compared if a[k] != b[k]]
    one_sided = sorted(k for k in a.keys() ^ b.keys() if k.split(".")[0] not in NOT_COMPARED)
    return changes, one_sided


def saved_config(state: dict[str, Any]) -> dict[str, Any]:
    extra = state.get("extra", {})
    if "config" in extra:
        return extra["config"]
    return {"optim": extra.get("settings", {})}  # checkpoints before this module recorded the optimizer only


def plan_resume(out: Path, config: dict[str, Any], policy: str, *, override: bool = False) -> ResumePlan | None:
    """The checkpoint to resume from (None: start fresh), or a ResumeError that says why not
    and what to do. `config` is the new run's whole config as a nested dict."""
    if policy not in POLICIES:
        raise ConfigError(f"resume={policy!r}: must be one of {list(POLICIES)}")
    ckpt = latest_checkpoint(out)
    if ckpt is None:
        return None
    state = read_state(ckpt)
    step = int(state["step"])
    if policy == "never":
        raise ResumeError(
            f"{out} already holds a checkpoint ({ckpt.name}, step {step}). To continue that run, pass --resume "
            "(or set `resume: auto` in the config); to start over, choose another output_dir or delete this one."
        )
    changes, one_sided = config_changes(saved_config(state), json.loads(json.dumps(config)))  # as it will be saved
    if one_sided:  # e.g. a field added since the checkpoint was written
        shown = ", ".join(one_sided[:8]) + (f" and {len(one_sided) - 8} more" if len(one_sided) > 8 else "")
        log.warning("resume: %d field(s) recorded on one side only, not compared: %s", len(one_sided), shown)
    unsafe = [c for c in changes if not c.safe]
    if unsafe or (changes and not override):
        lines = [f"  - {c}" + ("" if c.safe else "  [cannot change on resume]") for c in changes]
        fix = (
            "restore the saved values, or start a new output_dir"
            if unsafe
            else "pass --override-resume to accept these changes, or restore the saved values"
        )
        raise ResumeError(
            f"cannot resume {ckpt} (step {step}): {len(changes)} setting(s) differ from the saved run:\n"
            + "\n".join(lines)
            + f"\n  fix: {fix}. Changeable with --override-resume: {_SAFE_NAMES}"
        )
    for c in changes:
        log.warning("resume: accepted change %s (--override-resume)", c)
    return ResumePlan(ckpt, step, changes)
