"""The model-facing part of the engine: adapters over one shared base, and one batch step.

Every method runs on the engine thread (the only thread that touches tensors). A step is
one call of `kava.generate.solve_batch`, the library's single inference function; this
module never reimplements the method. Adapters after the first are attached to the first
one's base with peft (`kava.adapters.attach_adapter`), so they share its weights. Tests
substitute any object with the same methods (see `Runner`).
"""

from __future__ import annotations

import logging
import os
import resource
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import torch

from kava.adapters import AdapterError, attach_adapter, detach_adapter, load_adapter, read_adapter_config
from kava.backbone import KavaModel
from kava.builtin import resolve_base
from kava.generate import BatchOutput, solve_batch
from server.batch import Batch
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

    def step(self, batch: Batch) -> BatchOutput: ...

    def infos(self) -> list[AdapterInfo]: ...

    def add_adapter(self, name: str, path: Path) -> AdapterInfo: ...

    def remove_adapter(self, name: str) -> None: ...

    def warmup(self) -> None: ...

    def memory(self) -> DeviceMemory: ...

    def recover(self) -> None: ...


class ModelRunner:
    """Named KavaModels sharing one base; the first one is the default and owns the base."""

    def __init__(self, models: Mapping[str, KavaModel]):
        assert models, "a runner needs at least one model"
        self._models = dict(models)
        self.default = next(iter(self._models))
        self._attached = 0

    @classmethod
    def load(
        cls,
        adapters: Sequence[AdapterSpec],
        *,
        base_model: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
    ) -> ModelRunner:
        first, *rest = adapters
        # the built-in id names a directory inside the package; kava.backbone.load_base_model
        # does not map it yet (only the tokenizer loader does), so map it here
        base = resolve_base(base_model or read_adapter_config(first.path)["base_model"])
        log.info("loading adapter %s from %s on base %s", first.name, first.path, base)
        runner = cls({first.name: load_adapter(first.path, base_model=base, device=device, dtype=dtype)})
        for spec in rest:
            runner.add_adapter(spec.name, spec.path)
        return runner

    def _model(self, name: str) -> KavaModel:
        if name not in self._models:
            raise AdapterNotLoaded(name)
        return self._models[name]

    def step(self, batch: Batch) -> BatchOutput:
        return solve_batch(
            self._model(batch.key.adapter),
            batch.questions,
            mode=batch.key.mode,
            num_iterations=batch.key.num_iterations,
            max_new_tokens=batch.max_new_tokens,
            return_latents=batch.return_latents,
            is_cancelled=batch.is_cancelled,
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
        self._models[name] = attach_adapter(owner, path, f"served_{self._attached}")
        return next(i for i in self.infos() if i.name == name)

    def remove_adapter(self, name: str) -> None:
        model = self._model(name)
        if name == self.default:
            raise AdapterConflict(f"adapter {name!r} is the default and owns the base model; it cannot be unloaded")
        detach_adapter(model)
        del self._models[name]
        log.info("unloaded adapter %s", name)

    def warmup(self) -> None:
        """One short solve per mode, so the first request pays no one-off start-up costs."""
        model = self._models[self.default]
        for mode in ("latent", "cot"):
            solve_batch(model, [WARMUP_QUESTION], mode=mode, max_new_tokens=2)

    def memory(self) -> DeviceMemory:
        return device_memory(self._models[self.default].device)

    def recover(self) -> None:
        """After a failed batch: give cached CUDA blocks back (an OOM leaves them behind)."""
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


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
