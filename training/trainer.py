"""The training loop: AdamW + cosine warmup, accumulation, clipping, data parallelism, mixed
precision, progress bar, trackers, periodic evaluation and exactly-resumable checkpoints.

Generic over what is trained: it takes the module (its `requires_grad` parameters are
optimised), a loss function returning the total and its components, and a batch function
that is a pure function of the global micro-batch index, so resuming replays the data exactly.

Data parallelism goes through accelerate (launch with `torchrun` or `accelerate launch`).
Optimizer step s covers stream positions [s * batch_size, (s + 1) * batch_size), cut into
`grad_accum` micro-batches dealt round-robin to the processes: N processes compute the step
one process would (each runs `grad_accum / N` of them, all but the last under `no_sync`;
gradients are averaged once). When N does not divide `grad_accum` the step is cut into
lcm(grad_accum, N) micro-batches instead (the same examples, smaller forward passes). The
whole loss function runs as the forward of one DDP module, because a KaVa step calls the
model many times on KV caches and DDP must see one forward per backward.
Evaluation, logging and saving run on the main process. An optional `Schedule` (a
curriculum) tags each step's log record, may change its state between steps, and is saved
with every checkpoint. Does not own models, data formats or the resume rules
(`training.resume`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from training.checkpoint import checkpoint_path, load_checkpoint, local_rng_state, prune_checkpoints, save_checkpoint
from training.recompute import recompute_mlps
from training.trackers import Trackers

log = logging.getLogger(__name__)

LossFn = Callable[[Any], dict[str, Any]]  # batch -> {"total": tensor, component: float | tensor, ...}
BatchFn = Callable[[int, int], Any]  # (first position in the example stream, count) -> batch on device
PRECISIONS = ("auto", "no", "bf16")


class Schedule(Protocol):
    """Training state beyond the optimizer that moves between steps (a curriculum's stage).
    Its state travels in every checkpoint, so a resumed run continues exactly."""

    def fields(self, step: int) -> dict[str, Any]: ...  # tags optimizer step `step` (0-based) in the log

    def after_step(self, step: int) -> dict[str, Any] | None: ...  # after `step` steps; a record to log

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class OptimSettings:
    lr: float = 8e-4
    weight_decay: float = 0.1
    warmup_ratio: float = 0.03
    max_steps: int = 1000
    batch_size: int = 16  # global, per optimizer step (before accumulation split)
    grad_accum: int = 1
    grad_clip: float = 2.0
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0  # 0 = only at the end
    save_every: int = 100
    keep_last: int = 3  # checkpoint-<step>/ folders kept (0 = all)
    mixed_precision: str = "auto"  # auto (bf16 on a bf16-capable GPU, else no) | no | bf16
    gradient_checkpointing: bool = False  # recompute MLP activations in backward (training.recompute)
    # wall-clock budget of the training loop in minutes (0 = none): the schedule's progress is the larger of
    # step / max_steps and time spent / budget, and the run ends (final eval, adapter) when the time is spent
    max_minutes: float = 0.0

    def __post_init__(self) -> None:
        if self.mixed_precision is False:  # YAML 1.1 reads a bare `no` (optim.mixed_precision=no) as false
            object.__setattr__(self, "mixed_precision", "no")
        problems = []
        for name in ("max_steps", "batch_size", "grad_accum", "log_every", "save_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)!r}: must be an integer >= 1")
        if not isinstance(self.keep_last, int) or self.keep_last < 0:
            problems.append(f"keep_last={self.keep_last!r}: must be an integer >= 0 (0 keeps every checkpoint)")
        if not isinstance(self.gradient_checkpointing, bool):
            problems.append(f"gradient_checkpointing={self.gradient_checkpointing!r}: must be true or false")
        if self.mixed_precision == "fp16":
            problems.append(
                "mixed_precision='fp16': needs loss scaling, which this trainer does not do; use bf16 or no"
            )
        elif self.mixed_precision not in PRECISIONS:
            problems.append(f"mixed_precision={self.mixed_precision!r}: must be one of {list(PRECISIONS)}")
        if not isinstance(self.max_minutes, (int, float)) or self.max_minutes < 0:
            problems.append(f"max_minutes={self.max_minutes!r}: must be a number >= 0 (0 = no time budget)")
        if self.lr <= 0:
            problems.append(f"lr={self.lr!r}: must be > 0")
        if not 0 <= self.warmup_ratio < 1:
            problems.append(f"warmup_ratio={self.warmup_ratio!r}: must be in [0, 1)")
        if self.batch_size % self.grad_accum:
            problems.append(f"batch_size={self.batch_size} must be a multiple of grad_accum={self.grad_accum}")
        if problems:
            raise ValueError("; ".join(problems))


def cosine_with_warmup(
    optimizer: torch.optim.Optimizer, total: int, warmup_ratio: float, clock: Callable[[], float] | None = None
):
    """Linear warm-up, then cosine decay to 0 at `total` steps. With `clock` (the share of a time
    budget spent, 0..1), a step counts as at least `clock() * total`: a time-bound run decays on time."""
    warmup = max(1, round(total * warmup_ratio)) if warmup_ratio > 0 else 0

    def factor(step: int) -> float:
        if clock is not None:
            step = max(step, min(1.0, clock()) * total)
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def resolve_precision(setting: str, cpu: bool) -> str:
    """`auto`: bf16 on a GPU that has it, else full precision. The config decides, not the
    launcher (`accelerate launch` sets a precision even when not asked; torchrun sets none),
    so both launchers train the same way."""
    if setting != "auto":
        return setting
    return "bf16" if not cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def make_accelerator(settings: OptimSettings, *, cpu: bool = False, find_unused_parameters: bool = True):
    """The process's accelerate handle: joins the process group when launched by torchrun or
    `accelerate launch` (gloo on CPU, nccl on GPU), picks the device and the precision.
    `find_unused_parameters=False` saves DDP a graph walk per step when every trainable
    parameter takes part in every loss (if one does not, DDP stops with an error)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    handlers = [
        DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters),
        # the main process evaluates alone while the others wait in the next step's all-reduce
        InitProcessGroupKwargs(timeout=timedelta(hours=1)),
    ]
    precision = resolve_precision(settings.mixed_precision, cpu)
    return Accelerator(cpu=cpu, mixed_precision=precision, kwargs_handlers=handlers)


def split_step(batch_size: int, grad_accum: int, world: int) -> tuple[int, int]:
    """(micro-batches per optimizer step over all processes, examples in each): `grad_accum`
    when the processes divide it, so N processes run exactly one process's micro-batches."""
    n = math.lcm(grad_accum, world)
    if batch_size % n:
        raise ValueError(
            f"optim.batch_size={batch_size} cannot be cut into {n} micro-batches (lcm of grad_accum={grad_accum} "
            f"and {world} processes): make batch_size a multiple of {n}, or grad_accum a multiple of {world}"
        )
    if n != grad_accum:
        log.warning(
            "optim.grad_accum=%d on %d processes: each step runs as %d micro-batches of %d; a grad_accum that is "
            "a multiple of %d keeps the 1-process micro-batches (and numbers)",
            grad_accum,
            world,
            n,
            batch_size // n,
            world,
        )
    return n, batch_size // n


class _Step(nn.Module):
    """The loss function as one module's forward, so DDP sees one forward per backward."""

    def __init__(self, module: nn.Module, loss_fn: LossFn):
        super().__init__()
        self.module, self.loss_fn = module, loss_fn

    def forward(self, batch: Any) -> dict[str, Any]:
        return self.loss_fn(batch)


class Trainer:
    def __init__(
        self,
        module: nn.Module,
        loss_fn: LossFn,
        batch_fn: BatchFn,
        settings: OptimSettings,
        out_dir: str | Path,
        *,
        eval_fn: Callable[[int], dict[str, Any]] | None = None,
        save_fn: Callable[[Path], None] | None = None,
        schedule: Schedule | None = None,
        accelerator=None,
        run_config: dict[str, Any] | None = None,
        report_to: Iterable[str] = ("jsonl",),
    ):
        self.module, self.batch_fn, self.s = module, batch_fn, settings
        self.out = Path(out_dir)
        self.eval_fn, self.save_fn, self.schedule = eval_fn, save_fn, schedule
        cpu = next(module.parameters()).device.type == "cpu"
        self.acc = accelerator if accelerator is not None else make_accelerator(settings, cpu=cpu)
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        self.micro_batches, self.micro_size = split_step(settings.batch_size, settings.grad_accum, self.world)
        self.local_accum = self.micro_batches // self.world
        if settings.gradient_checkpointing:
            recompute_mlps(module)
        self.params = [p for p in module.parameters() if p.requires_grad]
        decay = [p for p in self.params if p.dim() >= 2]
        no_decay = [p for p in self.params if p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=settings.lr,
            betas=(0.9, 0.999),
        )
        self.elapsed_s, self._since = 0.0, None  # training-loop seconds before this fit(), and when it began
        clock = self._time_spent if settings.max_minutes > 0 else None
        self.scheduler = cosine_with_warmup(self.optimizer, settings.max_steps, settings.warmup_ratio, clock)
        self.step_module = self.acc.prepare_model(_Step(module, loss_fn))  # DDP (+ autocast) when asked
        self.run_config = run_config if run_config is not None else {"optim": asdict(settings)}
        self.report_to = tuple(report_to)
        self.step = 0

    @property
    def main(self) -> bool:
        return self.acc.is_main_process

    def _seconds_spent(self) -> float:
        """Training-loop seconds over every resumed run, this one's so far included."""
        return self.elapsed_s + (time.perf_counter() - self._since if self._since is not None else 0.0)

    def _time_spent(self) -> float:
        """Share of `max_minutes` spent by the training loop."""
        return self._seconds_spent() / (60 * self.s.max_minutes)

    def _out_of_time(self) -> bool:
        """Every process takes the main one's word, so all of them stop at the same step."""
        if self.world == 1:
            return self._time_spent() >= 1.0
        spent = torch.tensor([self._time_spent()], dtype=torch.float64, device=self.acc.device)
        return float(self.acc.reduce(spent, reduction="max")) >= 1.0

    def _resume(self, path: Path) -> None:
        state = load_checkpoint(path, self.module, self.optimizer, self.scheduler, rank=self.rank)
        self.step = state["step"]
        self.elapsed_s = float(state["extra"].get("elapsed_s", 0.0))
        if self.schedule is not None:
            self.schedule.load_state_dict(state["extra"].get("schedule", {}))
        log.info("resumed from %s at step %d", path, self.step)

    def _optimizer_step(self) -> dict[str, float]:
        parts: dict[str, float] = {}
        self.module.train()
        self.optimizer.zero_grad(set_to_none=True)
        for a in range(self.local_accum):
            micro = a * self.world + self.rank  # this step's micro-batches go round-robin over processes
            batch = self.batch_fn(self.step * self.s.batch_size + micro * self.micro_size, self.micro_size)
            last = a == self.local_accum - 1
            with contextlib.nullcontext() if last else self.acc.no_sync(self.step_module):
                out = self.step_module(batch)
                self.acc.backward(out["total"] / self.local_accum)
            for k, v in out.items():
                parts[k] = (
                    parts.get(k, 0.0) + float(v.detach() if isinstance(v, torch.Tensor) else v) / self.local_accum
                )
        parts = self._mean_over_processes(parts)
        parts["grad_norm"] = float(self.acc.clip_grad_norm_(self.params, self.s.grad_clip))
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return parts

    def _mean_over_processes(self, parts: dict[str, float]) -> dict[str, float]:
        """The logged loss is the whole step's, not the main process's share of it."""
        if self.world == 1:
            return parts
        keys = sorted(parts)
        values = torch.tensor([parts[k] for k in keys], dtype=torch.float64, device=self.acc.device)
        return dict(zip(keys, self.acc.reduce(values, reduction="mean").tolist()))

    def _save(self) -> None:
        rng = {k: self.acc.gather(v.to(self.acc.device)) for k, v in local_rng_state().items()}  # (ranks, N)
        if not self.main:
            return
        extra = {"config": self.run_config, "world_size": self.world}
        if self._since is not None:
            extra["elapsed_s"] = self._seconds_spent()
        if self.schedule is not None:
            extra["schedule"] = self.schedule.state_dict()
        path = checkpoint_path(self.out, self.step)
        save_checkpoint(path, self.module, self.optimizer, self.scheduler, self.step, extra=extra, rng=rng)
        for gone in prune_checkpoints(self.out, self.s.keep_last):
            log.debug("removed %s (keep_last=%d)", gone, self.s.keep_last)

    def fit(
        self, stop_after: int | None = None, resume_from: Path | None = None, resume_note: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Train to `max_steps` (or stop early after `stop_after` total steps, checkpointed),
        continuing from checkpoint `resume_from` when given (`training.resume.plan_resume`
        decides whether one may be; `resume_note` joins the logged resume record). The main
        process returns the last logged record."""
        self.out.mkdir(parents=True, exist_ok=True)
        if resume_from is not None:
            self._resume(Path(resume_from))
        else:
            torch.manual_seed(self.s.seed)
        trackers = Trackers(
            self.out,
            self.report_to,
            main=self.main,
            config=self.run_config,
            resume_step=self.step if resume_from is not None else None,
        )
        if resume_from is not None:
            trackers.log({"step": self.step, "resumed_from": Path(resume_from).name, **(resume_note or {})})
        end = min(self.s.max_steps, stop_after) if stop_after is not None else self.s.max_steps
        bar = tqdm(total=self.s.max_steps, initial=self.step, desc="train", disable=not self.main, dynamic_ncols=True)
        last: dict[str, Any] = {}
        t0, seen = time.perf_counter(), 0
        self._since, timed_out = t0, False
        while self.step < end and not timed_out:
            tags = self.schedule.fields(self.step) if self.schedule is not None else {}
            parts = self._optimizer_step()
            seen += self.s.batch_size
            rate = seen / (time.perf_counter() - t0)
            timed_out = self.s.max_minutes > 0 and self._out_of_time()
            bar.update(1)
            bar.set_postfix({k: f"{v:.3g}" for k, v in parts.items() if k != "grad_norm"} | {"ex/s": f"{rate:.1f}"})
            if self.step % self.s.log_every == 0 or self.step == end or timed_out:
                lr = self.scheduler.get_last_lr()[0]
                last = {"step": self.step, "lr": lr, **tags, **parts, "examples_per_s": rate}
                trackers.log(last)
            event = self.schedule.after_step(self.step) if self.schedule is not None else None
            if event:  # before the save below, so the checkpoint holds the decision
                trackers.log({"step": self.step, **event})
            if timed_out and self.main:
                trackers.log({"step": self.step, "stopped": f"max_minutes={self.s.max_minutes} spent"})
            more = self.step < end and not timed_out
            if self.eval_fn and self.s.eval_every and self.step % self.s.eval_every == 0 and more:
                if self.main:
                    trackers.log({"step": self.step, "eval": self.eval_fn(self.step)})
            if self.step % self.s.save_every == 0 or not more:
                self._save()
        bar.close()
        if (self.step >= self.s.max_steps or timed_out) and self.main:
            if self.eval_fn:
                last["eval"] = self.eval_fn(self.step)
                trackers.log({"step": self.step, "eval": last["eval"]})
            if self.save_fn:
                self.save_fn(self.out / "adapter")
        self.acc.wait_for_everyone()  # nobody leaves (or starts the next run here) before the files are written
        trackers.close()
        return last if self.main else {}
