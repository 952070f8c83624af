"""One run's configuration: a YAML/JSON file, overridable field by field on the command line.

Owns the file format, `a.b=value` overrides and validation that happens before any model
loads (unknown fields, out-of-range values, missing data files — every problem at once).
The method and LoRA sections are `kava.config`'s dataclasses; the optimizer section is
the trainer's `OptimSettings`; the curriculum section is `training.curriculum`'s
`CurriculumSettings` (a training schedule, so not part of the adapter's MethodConfig).
`resume` (`training.resume`) and `report_to` (`training.trackers`) are top-level fields.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kava.config import ConfigError, LoraSettings, MethodConfig
from training.curriculum import CurriculumSettings
from training.resume import POLICIES
from training.trackers import problems as tracker_problems
from training.trainer import OptimSettings


@dataclass(frozen=True)
class DataSettings:
    train: str = "builtin"  # builtin | path (.jsonl/.txt/.parquet, GSM8k or AUG layout) | hub:owner/name
    eval: str = "builtin"  # builtin (the held-out split) | path
    style: str = "equation"  # equation | nl
    num_train: int = 20_000  # problems drawn from the generator (builtin only)
    num_eval: int = 200
    seed: int = 1
    max_value: int = 100  # builtin: the task's largest number (training stream and held-out split)
    min_steps: int = 2  # builtin training stream: problems of min_steps..4 steps (1 adds one-step questions)
    rephrase: float = 0.0  # builtin training stream: share of questions asked the way people ask
    small_numbers: float = 0.0  # builtin training stream: share of problems with numbers up to 20
    group_by_length: int = 0  # sort each run of N batches by length (less padding); 0 = off


@dataclass(frozen=True)
class EvalSettings:
    modes: tuple[str, ...] = ("latent",)
    batch_size: int = 32
    max_new_tokens: int = 16  # latent mode: the answer only
    cot_max_new_tokens: int = 96
    final: bool = True  # evaluate once more when training ends
    grad_share_every: int = 0  # every N micro-batches, log each loss term's share of the gradient norm (0 = off)


@dataclass(frozen=True)
class TrainConfig:
    base_model: str = "kava-builtin"
    output_dir: str = "runs/kava"
    device: str = "auto"
    resume: str = "never"  # never: refuse an output_dir holding a checkpoint | auto: continue its newest
    init_adapter: str = ""  # an adapter directory whose weights start the run (fine-tuning it further); "" = fresh
    report_to: tuple[str, ...] = ("jsonl",)  # jsonl | tensorboard | wandb
    method: MethodConfig = field(default_factory=MethodConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    data: DataSettings = field(default_factory=DataSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    curriculum: CurriculumSettings = field(default_factory=CurriculumSettings)  # off unless stages >= 1

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lora"] = self.lora.to_dict()
        return d


SECTIONS = {
    "method": MethodConfig,
    "lora": LoraSettings,
    "optim": OptimSettings,
    "data": DataSettings,
    "eval": EvalSettings,
    "curriculum": CurriculumSettings,
}


def _parse_value(text: str) -> Any:
    return yaml.safe_load(text)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`optim.lr=1e-3 method.num_latents=8` -> nested dict updates (values parsed as YAML)."""
    out = json.loads(json.dumps(raw))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. optim.lr=1e-3")
        key, value = item.split("=", 1)
        node = out
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a section")
        node[leaf] = _parse_value(value)
    return out


def _coerce_numbers(cls: type, section: dict[str, Any]) -> dict[str, Any]:
    """YAML 1.1 reads `5e-4` as a string; numeric fields take numeric strings as numbers."""
    out = dict(section)
    for f in dataclasses.fields(cls):
        v = out.get(f.name)
        if isinstance(v, str) and isinstance(f.default, (int, float)) and not isinstance(f.default, bool):
            try:
                out[f.name] = type(f.default)(float(v)) if isinstance(f.default, float) else int(v)
            except ValueError:
                pass  # left as is; the dataclass check names the field
    return out


def _data_problems(data: DataSettings, problems: list[str]) -> None:
    for name in ("train", "eval"):
        src = getattr(data, name)
        if src == "builtin" or src.startswith(("hub:", "builtin:")):
            continue
        if not Path(src).exists():
            problems.append(f"data.{name}={src!r}: file not found")
    if data.style not in ("equation", "nl"):
        problems.append(f"data.style={data.style!r}: must be 'equation' or 'nl'")
    for name in ("num_train", "num_eval"):
        if not isinstance(getattr(data, name), int) or getattr(data, name) < 1:
            problems.append(f"data.{name}={getattr(data, name)!r}: must be an integer >= 1")
    if not isinstance(data.max_value, int) or data.max_value < 12:
        problems.append(f"data.max_value={data.max_value!r}: must be an integer >= 12 (the templates need it)")
    if data.min_steps not in (1, 2, 3, 4):
        problems.append(f"data.min_steps={data.min_steps!r}: must be 1, 2, 3 or 4 (the generator writes up to 4 steps)")
    g = data.group_by_length
    if not isinstance(g, int) or isinstance(g, bool) or g < 0:
        problems.append(f"data.group_by_length={g!r}: must be an integer >= 0 (batches sorted together; 0 = off)")
    for name in ("rephrase", "small_numbers"):
        r = getattr(data, name)
        if not (isinstance(r, (int, float)) and not isinstance(r, bool) and 0.0 <= r <= 1.0):
            problems.append(f"data.{name}={r!r}: must be a share in [0, 1]")


def build_config(raw: dict[str, Any]) -> TrainConfig:
    """Validate a nested dict into a TrainConfig; raises ConfigError naming every bad field."""
    problems: list[str] = []
    top_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(raw) - top_fields)
    if unknown:
        problems.append(f"unknown field(s) {unknown}; known: {sorted(top_fields)}")
    kwargs: dict[str, Any] = {k: v for k, v in raw.items() if k in top_fields and k not in SECTIONS}
    if "resume" in kwargs and kwargs["resume"] not in POLICIES:
        problems.append(f"resume={kwargs['resume']!r}: must be one of {list(POLICIES)} (or pass --resume)")
    if "report_to" in kwargs:
        report_to = kwargs["report_to"]
        kwargs["report_to"] = tuple([report_to] if isinstance(report_to, str) else report_to or ())
        problems += tracker_problems(kwargs["report_to"])
    for name, cls in SECTIONS.items():
        section = raw.get(name) or {}
        if not isinstance(section, dict):
            problems.append(f"{name}: must be a mapping")
            continue
        known = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(section) - known)
        if bad:
            problems.append(f"unknown field(s) {[f'{name}.{b}' for b in bad]}; known: {sorted(known)}")
            continue
        section = _coerce_numbers(cls, section)
        if name == "eval" and isinstance(section.get("modes"), (list, str)):
            modes = section["modes"]
            section = {**section, "modes": tuple([modes] if isinstance(modes, str) else modes)}
        try:
            kwargs[name] = cls(**section)
        except (ConfigError, ValueError, TypeError) as e:
            problems.append(f"{name}: {e}")
    if "data" in kwargs:
        _data_problems(kwargs["data"], problems)
    if "eval" in kwargs:
        bad_modes = [m for m in kwargs["eval"].modes if m not in ("latent", "cot")]
        if bad_modes:
            problems.append(f"eval.modes={list(kwargs['eval'].modes)}: each must be 'latent' or 'cot'")
    if "curriculum" in kwargs and "method" in kwargs:
        cur, method = kwargs["curriculum"], kwargs["method"]
        if cur.enabled and not method.uses_latents:
            problems.append(
                f"curriculum.stages={cur.stages}: objective {method.objective!r} has no latents to replace steps "
                "with; use method.objective=kava|pccot|codi or curriculum.stages=0"
            )
    if problems:
        raise ConfigError("invalid training config:\n  - " + "\n  - ".join(problems))
    return TrainConfig(**kwargs)


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} not found")
        raw = (json.loads(p.read_text()) if p.suffix == ".json" else yaml.safe_load(p.read_text())) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {p}: top level must be a mapping")
    return build_config(apply_overrides(raw, list(overrides)))
