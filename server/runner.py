"""The model-facing part of the engine: adapters over one shared base, and one engine step.

Every method runs on the engine thread (the only thread that touches tensors). A step is
one forward pass of the library's running batch (`kava.running.Running`, the loop
`kava.generate.solve_batch` runs to completion) over the engine's `Batch`: jobs cancelled
or past their deadline leave first, jobs new to it join with their prefill, and rows that
finish leave at the end of the pass. This module never reimplements the method. Adapters
after the first are attached to the first one's base with peft
(`kava.adapters.attach_adapter`), so they share its weights; each serves through its own
merged fast weights (`kava.fastlm`), so a model the fast path does not cover is refused at
load. Tests substitute any object with the same methods (see `Runner`).
"""

from __future__ import annotations

import logging
import os
import resource
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import torch

from kava.adapters import AdapterError, attach_adapter, detach_adapter, load_adapter, read_adapter_config
from kava.backbone import KavaModel
from kava.builtin import resolve_base
from kava.config import MODES
from kava.fastlm import FastPathUnsupported, fast_lm
from kava.generate import SolveResult, solve_batch
from kava.running import Ask, Row, Running
from server.batch import Batch, Finished, Job, PassStats, StepOutput
from server.settings import AdapterSpec
from server.stats import AdapterInfo, DeviceMemory

log = logging.getLogger(__name__)

WARMUP_QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have?"


class AdapterNotLoaded(LookupError):
    def __init__(self, name: str):
        self.name = name
        super().__init__(f"adapter {name!r} is not loaded; GET /v1/models lists the loaded ones")


class AdapterConflict(ValueError):
    """The operation would clash with what is loaded (a taken name, the base's owner)."""


class Runner(Protocol):
    """What the engine needs from the model side."""

    default: str

    def step(self, batch: Batch) -> StepOutput: ...

    def infos(self) -> list[AdapterInfo]: ...

    def add_adapter(self, name: str, path: Path) -> AdapterInfo: ...

    def remove_adapter(self, name: str) -> None: ...

    def warmup(self) -> None: ...

    def memory(self) -> DeviceMemory: ...

    def recover(self) -> None: ...


class ModelRunner:
    """Named KavaModels sharing one base; the first one is the default and owns the base."""

    def __init__(self, models: Mapping[str, KavaModel], *, graphs: bool = False):
        assert models, "a runner needs at least one model"
        self._models = dict(models)
        self.graphs = graphs  # fixed-shape passes, CUDA graphs on CUDA (kava.graphs)
        self.default = next(iter(self._models))
        self._attached = 0
        for name, model in self._models.items():
            _check_fast(model, name)
        self._running: Running | None = None  # the running batch (one adapter at a time)
        self._adapter: str | None = None

    @classmethod
    def load(
        cls,
        adapters: Sequence[AdapterSpec],
        *,
        base_model: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        graphs: bool = False,
    ) -> ModelRunner:
        first, *rest = adapters
        # the built-in id names a directory inside the package; kava.backbone.load_base_model
        # does not map it yet (only the tokenizer loader does), so map it here
        base = resolve_base(base_model or read_adapter_config(first.path)["base_model"])
        log.info("loading adapter %s from %s on base %s", first.name, first.path, base)
        runner = cls({first.name: load_adapter(first.path, base_model=base, device=device, dtype=dtype)}, graphs=graphs)
        for spec in rest:
            runner.add_adapter(spec.name, spec.path)
        return runner

    def _model(self, name: str) -> KavaModel:
        if name not in self._models:
            raise AdapterNotLoaded(name)
        return self._models[name]

    def step(self, batch: Batch) -> StepOutput:
        """One forward pass over `batch` (see the module docstring)."""
        running = self._running_for(batch.adapter)
        out = StepOutput()
        now = time.perf_counter()
        live = {id(j) for j in batch.jobs}
        for row in list(running.rows):  # 1. leave before the pass: cancelled, deadline, gone
            job: Job = row.tag
            if id(job) not in live or job.cancelled or job.expired(now):
                running.leave(row, "cancelled")
                out.finished.append(self._finished(running, row))
        inside = {id(r.tag) for r in running.rows} | {id(f.job) for f in out.finished}
        for job in batch.jobs:  # 2. join: their prefill rides in this pass
            if id(job) in inside:
                continue
            if job.cancelled or job.expired(now):
                out.finished.append(Finished(job, _never_ran(), now, None, 0.0, 0.0, 0.0))
                continue
            ask = Ask(
                job.question,
                job.key.mode,
                max_new_tokens=job.max_new_tokens,
                num_iterations=job.key.num_iterations,
                return_latents=job.return_latents,
                stream=job.on_token is not None,
            )
            running.join(ask, tag=job)
        if not running:
            return out
        p = running.step()  # 3. the pass
        out.stats = PassStats(p.rows, p.phases, running.held_bytes)
        out.tokens = [(t.row.tag, t.id, t.text) for t in p.tokens]
        out.finished += [self._finished(running, r) for r in p.finished]
        return out

    def _running_for(self, adapter: str) -> Running:
        model = self._model(adapter)  # raises AdapterNotLoaded
        if self._running is None or self._adapter != adapter:
            assert self._running is None or not self._running, "switch adapters only between batches"
            self._running, self._adapter = Running(model, graphs=self.graphs), adapter
        return self._running

    def _finished(self, running: Running, row: Row) -> Finished:
        job: Job = row.tag
        return Finished(
            job=job,
            result=running.result(row),
            joined_at=row.joined_at,
            first_token_at=row.first_token_at,
            prefill_s=row.times["prefill"],
            latent_s=row.times["latent"],
            decode_s=row.times["decode"],
        )

    def infos(self) -> list[AdapterInfo]:
        return [
            AdapterInfo(
                name=name,
                base_model=m.base_model_id,
                num_latents=m.config.num_latents,
                num_iterations=m.config.num_iterations,
                dtype=str(m.dtype).removeprefix("torch."),
                device=str(m.device),
            )
            for name, m in self._models.items()
        ]

    def add_adapter(self, name: str, path: Path) -> AdapterInfo:
        if name in self._models:
            raise AdapterConflict(f"adapter name {name!r} is already loaded; DELETE it first or pick another name")
        owner = self._models[self.default]
        recorded = read_adapter_config(path)["base_model"]
        if recorded != owner.base_model_id:
            raise AdapterError(
                Path(path),
                [f"trained on base {recorded!r}, but this server's base is {owner.base_model_id!r}"],
            )
        # peft's own names stay internal: ours may contain '.', which a ModuleDict key may not
        self._attached += 1
        log.info("attaching adapter %s from %s", name, path)
        model = attach_adapter(owner, path, f"served_{self._attached}")
        try:
            _check_fast(model, str(path))
        except AdapterError:
            detach_adapter(model)
            raise
        self._models[name] = model
        return next(i for i in self.infos() if i.name == name)

    def remove_adapter(self, name: str) -> None:
        model = self._model(name)
        if name == self.default:
            raise AdapterConflict(f"adapter {name!r} is the default and owns the base model; it cannot be unloaded")
        detach_adapter(model)
        del self._models[name]
        if self._adapter == name:
            self._running = self._adapter = None
        log.info("unloaded adapter %s", name)

    def warmup(self) -> None:
        """One short solve per mode, so the first request pays no one-off start-up costs."""
        model = self._models[self.default]
        for mode in MODES:
            solve_batch(model, [WARMUP_QUESTION], mode=mode, max_new_tokens=2)

    def memory(self) -> DeviceMemory:
        return device_memory(self._models[self.default].device)

    def recover(self) -> None:
        """After a failed step: forget the running batch (the engine failed its jobs) and
        give cached CUDA blocks back (an OOM leaves them behind)."""
        self._running = self._adapter = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _check_fast(model: KavaModel, where: str) -> None:
    """The server runs the fast path only: refuse a model it does not cover, at load time."""
    try:
        fast_lm(model)
    except FastPathUnsupported as exc:
        raise AdapterError(Path(where), [f"the server's fast inference path cannot run it: {exc}"]) from exc


def _never_ran() -> SolveResult:
    return SolveResult("", None, "cancelled", 0, 0, 0, 0, 0)


def device_memory(device: torch.device) -> DeviceMemory:
    """CUDA: allocated / peak allocated by torch. CPU: resident set size / peak RSS of the
    whole process (model, activations and everything else)."""
    if device.type == "cuda":
        return DeviceMemory(str(device), torch.cuda.memory_allocated(device), torch.cuda.max_memory_allocated(device))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    try:
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: the peak is the best cheap figure
        rss = peak
    return DeviceMemory(device.type, rss, peak)
