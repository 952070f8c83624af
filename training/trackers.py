"""Where a run's records go: `report_to` names the sinks (jsonl, tensorboard, wandb).

JSONL (`<out>/log.jsonl`, one nested record per line) is the default and the record the
tests and tools read. TensorBoard (`<out>/tensorboard/`) and W&B go through accelerate's
tracker classes and get the same records flattened to scalars (`eval/latent/accuracy`).
Only the main process writes. On resume, records past the checkpoint's step (the
interrupted tail, about to be replayed) are dropped from the JSONL and purged from
TensorBoard. `problems` checks availability before any model loads. Does not own what is
logged or when (the trainer).
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterable
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from training.resume import flatten

log = logging.getLogger(__name__)

REPORTERS = ("jsonl", "tensorboard", "wandb")


def wandb_configured(env: dict[str, str] | None = None) -> bool:
    """W&B can start without asking for a key: an API key, an offline/disabled mode, or a
    `wandb login` entry in the netrc file."""
    env = dict(os.environ) if env is None else env
    if env.get("WANDB_API_KEY") or env.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun"):
        return True
    netrc = Path(env.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def problems(report_to: Iterable[str]) -> list[str]:
    """Every reason the named sinks cannot be used here, each with its fix."""
    report_to = list(report_to)
    out = [
        f"report_to={report_to}: unknown {n!r}; choose from {list(REPORTERS)}" for n in report_to if n not in REPORTERS
    ]
    if "tensorboard" in report_to and find_spec("tensorboard") is None and find_spec("tensorboardX") is None:
        out.append("report_to includes 'tensorboard' but it is not installed: pip install 'kava[trackers]'")
    if "wandb" in report_to:
        if find_spec("wandb") is None:
            out.append("report_to includes 'wandb' but it is not installed: pip install 'kava[trackers]'")
        elif not wandb_configured():
            out.append(
                "report_to includes 'wandb' but W&B has no credentials: set WANDB_API_KEY, run `wandb login`, "
                "or set WANDB_MODE=offline"
            )
    return out


def scalars(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Numbers of a nested record under slash-joined names; text and lists are left out."""
    out: dict[str, float] = {}
    for k, v in record.items():
        if isinstance(v, dict):
            out |= scalars(v, f"{prefix}{k}/")
        elif isinstance(v, (int, float)):
            out[f"{prefix}{k}"] = float(v)
    return out


def _flat_config(config: dict[str, Any]) -> dict[str, Any]:
    """The run config as hparams: dotted names (`training.resume.flatten`), values a tracker takes."""
    plain = (bool, int, float, str, type(None))
    return {k: v if isinstance(v, plain) else str(v) for k, v in flatten(config).items()}


class Trackers:
    """The run's sinks; every call is a no-op off the main process."""

    def __init__(
        self,
        out: Path,
        report_to: Iterable[str],
        *,
        main: bool,
        config: dict[str, Any] | None = None,
        resume_step: int | None = None,
    ):
        self.main, self.out, report_to = main, Path(out), list(report_to)
        self.jsonl = self.out / "log.jsonl" if main and "jsonl" in report_to else None
        self.trackers: list[Any] = []
        if not main:
            return
        if self.jsonl is not None:
            self._trim_jsonl(resume_step)
        if "tensorboard" in report_to:
            from accelerate.tracking import TensorBoardTracker

            purge = {} if resume_step is None else {"purge_step": resume_step + 1}
            self.trackers.append(TensorBoardTracker("tensorboard", self.out, **purge))
        if "wandb" in report_to:
            from accelerate.tracking import WandBTracker

            id_file = self.out / "wandb_run_id.txt"  # one W&B run across resumes
            if not id_file.is_file() or resume_step is None:
                id_file.write_text(uuid.uuid4().hex[:12])
            project = os.environ.get("WANDB_PROJECT", "kava")
            kwargs = {"name": self.out.name, "dir": str(self.out), "id": id_file.read_text(), "resume": "allow"}
            self.trackers.append(WandBTracker(project, **kwargs))
        for t in self.trackers:
            t.start()
            if config is not None:
                t.store_init_configuration(_flat_config(config))

    def _trim_jsonl(self, resume_step: int | None) -> None:
        if resume_step is None or not self.jsonl.is_file():
            self.jsonl.write_text("")  # a fresh run's log starts empty
            return
        kept = []
        for line in self.jsonl.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= resume_step:
                    kept.append(line)
            except json.JSONDecodeError:  # the half-written last line of a killed run
                continue
        self.jsonl.write_text("".join(line + "\n" for line in kept))

    def log(self, record: dict[str, Any]) -> None:
        if not self.main:
            return
        if self.jsonl is not None:
            with self.jsonl.open("a") as f:
                f.write(json.dumps(record) + "\n")
        if self.trackers:
            step = record.get("step")
            values = scalars({k: v for k, v in record.items() if k != "step"})
            for t in self.trackers:
                t.log(values, step=step)

    def close(self) -> None:
        for t in self.trackers:
            t.finish()
        self.trackers = []
