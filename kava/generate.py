"""Batched question -> answer: `solve_batch`, the one inference function (latent, sequential or CoT).

The server, `kava eval` and the benchmarks all call it. It runs the fast path — a
`kava.running.Running` batch over `kava.fastlm` (LoRA merged, SDPA, static KV cache, packed
tokens, one host sync per pass) — to completion for the given questions, and falls back to
the reference path (`kava.reference`: peft + HF forward + DynamicCache) for a backbone the
fast path does not cover or when asked (`fast=False`). Both give the same tokens (tested for
Llama, Qwen2 and GPT-2, padded batches included). Does not own scheduling, HTTP or metrics
export; the server drives `Running` one pass at a time itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

import torch

from kava.backbone import KavaModel
from kava.config import MODES, Mode
from kava.fastlm import FastPathUnsupported, fast_lm
from kava.reference import solve_reference
from kava.results import PHASES, BatchOutput, BatchStats, SolveResult, nearest_tokens
from kava.running import Ask, Running

__all__ = ["MODES", "BatchOutput", "BatchStats", "Mode", "SolveResult", "nearest_tokens", "solve_batch"]

log = logging.getLogger(__name__)
_GRAPHED_LOCK = threading.Lock()  # solve_batch(graphs=True): one caller at a time per process


@torch.inference_mode()
def solve_batch(
    model: KavaModel,
    questions: Sequence[str],
    *,
    mode: Mode = "latent",
    num_iterations: int | None = None,
    max_new_tokens: int | Sequence[int] = 64,
    sequential: bool | None = None,
    return_latents: bool = False,
    is_cancelled: Callable[[int], bool] | None = None,
    fast: bool = True,
    graphs: bool = False,
) -> BatchOutput:
    """Answer a batch of questions.

    latent: prefill `Q <bot>` (+ the init pass, same forward) -> T Jacobi iterations (or M
    sequential latent passes), the last one also carrying `<eot> P` -> greedy answer.
    cot: prefill `Q` -> greedy CoT + answer. `is_cancelled(i)` drops question i between passes.
    `graphs=True` runs the fast path's uniform passes at fixed shapes, as CUDA graphs on a CUDA
    device (`kava.graphs`), in one running batch kept per model so its captures are reused.
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: must be one of {MODES}")
    if not questions:
        raise ValueError("questions: need at least one")
    b = len(questions)
    limits = [max_new_tokens] * b if isinstance(max_new_tokens, int) else list(max_new_tokens)
    assert len(limits) == b, "one max_new_tokens per question"
    kw = dict(mode=mode, num_iterations=num_iterations, sequential=sequential, return_latents=return_latents)
    if fast:
        try:
            fast_lm(model)
        except FastPathUnsupported as exc:
            log.info("reference path for this model: %s", exc)
        else:
            if not graphs:
                return _solve_fast(model, questions, limits, is_cancelled, Running(model, rows=b, length=1), **kw)
            with _GRAPHED_LOCK:
                running = graphed_running(model, b)
                try:
                    return _solve_fast(model, questions, limits, is_cancelled, running, **kw)
                except BaseException:
                    model.graphed_running = None  # rows may still be inside: the next call starts a fresh one
                    raise
    return solve_reference(model, questions, max_new_tokens=limits, is_cancelled=is_cancelled, **kw)


def graphed_running(model: KavaModel, rows: int) -> Running:
    """The running batch `solve_batch(graphs=True)` keeps on the model, so its captures outlive
    a call (a reference cycle the collector frees with the model, unlike a weak-keyed table
    whose values point back at their keys); a new one after the weights change."""
    running = getattr(model, "graphed_running", None)
    if running is None or running.lm is not fast_lm(model):
        running = model.graphed_running = Running(model, rows=rows, length=1, graphs=True)
    return running


def _solve_fast(
    model: KavaModel,
    questions: Sequence[str],
    limits: list[int],
    is_cancelled: Callable[[int], bool] | None,
    running: Running,
    **kw,
) -> BatchOutput:
    """The (empty) running batch, joined by every question at once and stepped until it is empty."""
    assert not running, "solve_batch needs an empty running batch"
    t0 = time.perf_counter()
    stats = BatchStats(batch_size=len(questions), mode=kw["mode"])
    asks = [Ask(q, max_new_tokens=n, **kw) for q, n in zip(questions, limits)]
    rows = [running.join(ask, tag=i) for i, ask in enumerate(asks)]  # grows the cache to fit once
    while running:
        out = running.step()
        for phase in PHASES:
            if out.phases[phase]:  # rows of one batch move in step, so one phase per pass
                stats.passes[phase] += 1
                setattr(stats, f"{phase}_s", getattr(stats, f"{phase}_s") + out.wall_s)
        if out.tokens and not stats.first_token_s:
            stats.first_token_s = time.perf_counter() - t0
        if is_cancelled is not None:
            for row in list(running.rows):
                if is_cancelled(row.tag):
                    running.leave(row, "cancelled")
    stats.total_s = time.perf_counter() - t0
    stats.peak_kv_bytes = running.cache.nbytes
    return BatchOutput([running.result(r) for r in rows], stats)
