"""A Coconut/iCoT-style curriculum for the latent objectives: its settings, its stage schedule
and the stage's own accuracy that can gate it. Off by default (`stages: 0`).

Stage k = 1..K trains the student on `Q <bot> z_1..z_M <eot> C_{k+1..n} P A <eos>`: the same
M latents as always stand in for the first k trace steps, the rest are still written
(`kava.prompts.encode_training_batch(written_from=k)`); stage K+1, to the end of the run, is
the plain objective with every step latent. Inference never changes.

Without a gate, stage k covers optimizer steps [(k-1)·N, k·N): a pure function of the global
step, so a resumed run is exact. With `advance_at`, a stage lasts at least N steps; from then
on every `gate_every` steps its own accuracy (latents, then the written steps and answer
decoded greedily) is measured, and the run moves on once it reaches `advance_at` or the stage
has run `max_steps_per_stage` steps. The steps where stages began are recorded in the
checkpoint's trainer state (and each decision in log.jsonl), so resuming replays the same
schedule. Owns neither the objective (`kava.losses`) nor the loop (`training.trainer`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from transformers.cache_utils import DynamicCache

from kava.answers import extract_answer, same_number
from kava.backbone import KavaModel
from kava.latent import prefill, run_latents
from kava.prompts import Example, encode_prefixes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CurriculumSettings:
    stages: int = 0  # K: stages 1..K replace the first k trace steps with the latents; 0 = off
    steps_per_stage: int = 0  # N optimizer steps per stage (with a gate: the least a stage runs)
    advance_at: float = 0.0  # gate in (0, 1]: stay in a stage until its own accuracy reaches this; 0 = no gate
    gate_every: int = 0  # with a gate: measure the stage's accuracy every this many steps after N (0 = N)
    max_steps_per_stage: int = 0  # with a gate: move on after this many steps regardless (required, >= N)

    def __post_init__(self) -> None:
        p: list[str] = []

        def whole(name: str, least: int) -> bool:
            v = getattr(self, name)
            ok = isinstance(v, int) and not isinstance(v, bool) and v >= least
            if not ok:
                p.append(f"curriculum.{name}={v!r}: must be an integer >= {least}")
            return ok

        whole("stages", 0)
        whole("gate_every", 0)
        whole("max_steps_per_stage", 0)
        a = self.advance_at
        if not (isinstance(a, (int, float)) and not isinstance(a, bool) and 0.0 <= a <= 1.0):
            p.append(f"curriculum.advance_at={a!r}: must be in (0, 1] (an accuracy), or 0 for no gate")
        if isinstance(self.stages, int) and self.stages > 0:
            if whole("steps_per_stage", 1) and self.gated and isinstance(self.max_steps_per_stage, int):
                if self.max_steps_per_stage < self.steps_per_stage:
                    p.append(
                        f"curriculum.max_steps_per_stage={self.max_steps_per_stage}: with advance_at set it must be "
                        f">= curriculum.steps_per_stage={self.steps_per_stage} (the cap on a stage that never "
                        "reaches advance_at)"
                    )
        if p:
            raise ValueError("; ".join(p))

    @property
    def enabled(self) -> bool:
        return self.stages > 0

    @property
    def gated(self) -> bool:
        return self.advance_at > 0


class Curriculum:
    """The stage of every optimizer step, as a trainer schedule (`training.trainer.Schedule`).

    Stages count from 1; stage K+1 is the plain objective. `evaluate` returns the current
    stage's own accuracy; it is called only with a gate, between optimizer steps.
    """

    def __init__(self, settings: CurriculumSettings, evaluate: Callable[[], float] | None = None):
        assert settings.enabled, "a Curriculum needs curriculum.stages >= 1"
        assert evaluate is not None or not settings.gated, "a gated curriculum needs an evaluate function"
        self.s, self.evaluate = settings, evaluate
        self.starts: list[int] = []  # the step where stage k+2 began, for k = 0, 1, ...

    @property
    def final(self) -> int:
        return self.s.stages + 1

    def stage_at(self, step: int) -> int:
        """The stage optimizer step `step` (0-based) trains in; known up to the current step."""
        if not self.s.gated:
            return min(step // self.s.steps_per_stage, self.s.stages) + 1
        return 1 + sum(start <= step for start in self.starts)

    def written_from(self, step: int) -> int | None:
        """How many leading trace steps the latents replace at `step`; None = all of them."""
        k = self.stage_at(step)
        return k if k < self.final else None

    def _start(self, k: int) -> int:
        if not self.s.gated:
            return (k - 1) * self.s.steps_per_stage
        return 0 if k == 1 else self.starts[k - 2]

    # the trainer's Schedule protocol ---------------------------------------------------
    def fields(self, step: int) -> dict[str, Any]:
        return {"stage": self.stage_at(step)}

    def after_step(self, step: int) -> dict[str, Any] | None:
        """After `step` optimizer steps: move on when the stage is done; a record of any decision."""
        k = self.stage_at(step - 1)
        if k >= self.final:
            return None
        ran = step - self._start(k)
        if ran < self.s.steps_per_stage:
            return None
        record: dict[str, Any] = {"stage": k, "steps_in_stage": ran}
        if self.s.gated:
            every = self.s.gate_every or self.s.steps_per_stage
            capped = ran >= self.s.max_steps_per_stage
            if (ran - self.s.steps_per_stage) % every and not capped:
                return None
            assert self.evaluate is not None
            acc = float(self.evaluate())
            record["stage_accuracy"] = acc
            if acc < self.s.advance_at and not capped:
                record["advanced"] = False
                log.info("curriculum: stage %d at %.3f after %d steps, below %.3f", k, acc, ran, self.s.advance_at)
                return {"curriculum": record}
        self.starts.append(step)
        record |= {"advanced": True, "next_stage": k + 1}
        log.info("curriculum: stage %d -> %d at step %d", k, k + 1, step)
        return {"curriculum": record}

    def state_dict(self) -> dict[str, Any]:
        return {"settings": asdict(self.s), "stage_starts": list(self.starts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("settings") not in (None, asdict(self.s)):
            log.warning("curriculum settings differ from the checkpoint's %s; continuing with the new ones", state)
        if self.s.gated and "stage_starts" not in state:
            raise ValueError(
                "the checkpoint has no curriculum state, so a gated schedule cannot be resumed exactly; "
                "start a fresh output_dir or drop curriculum.advance_at"
            )
        self.starts = [int(s) for s in state.get("stage_starts", [])]


# The stage's own accuracy ------------------------------------------------------------------
def _greedy_after_latents(model: KavaModel, questions: Sequence[str], max_new_tokens: int) -> list[str]:
    """`Q <bot>` -> the M latents (`kava.latent`, as at inference) -> `<eot>` -> greedy text."""
    cfg = model.config
    prefix = encode_prefixes(model.tokenizer, questions, model.ids, with_bot=True).to(model.device)
    lat = run_latents(
        model,
        prefill(model, prefix),
        num_latents=cfg.num_latents,
        num_iterations=cfg.num_iterations,
        sequential=cfg.sequential,
    )
    b = len(questions)
    cache: DynamicCache = lat.cache
    mask, lengths = lat.mask, lat.lengths  # (B, L), (B,)
    nxt = torch.full((b, 1), model.ids.eot, dtype=torch.long, device=model.device)  # (B, 1)
    tokens = torch.empty((b, 0), dtype=torch.long, device=model.device)  # (B, t)
    done = torch.zeros(b, dtype=torch.bool, device=model.device)  # (B,)
    for _ in range(max_new_tokens):
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)  # (B, L + 1)
        out = model(model.embed(nxt), mask, lengths[:, None], cache)
        cache, lengths = out.cache, lengths + 1
        logits = out.logits[:, -1].float().index_fill(-1, model.special_ids, float("-inf"))  # (B, V)
        nxt = logits.argmax(-1, keepdim=True)  # (B, 1)
        tokens = torch.cat([tokens, nxt], dim=1)
        done |= nxt[:, 0] == model.ids.eos
        if bool(done.all()):
            break
    texts = []
    for row in tokens.tolist():
        row = row[: row.index(model.ids.eos)] if model.ids.eos in row else row
        texts.append(model.tokenizer.decode(row, skip_special_tokens=True))
    return texts


@torch.no_grad()
def stage_accuracy(model: KavaModel, examples: Sequence[Example], *, batch_size: int, max_new_tokens: int) -> float:
    """Accuracy in the format a curriculum stage trains: after the latents the model writes
    whatever steps it learned to keep writing, then the answer prompt and the answer."""
    was_training = model.training
    model.eval()
    correct = 0
    try:
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            texts = _greedy_after_latents(model, [e.question for e in chunk], max_new_tokens)
            correct += sum(
                same_number(extract_answer(t, model.config.answer_prompt), e.answer) for t, e in zip(texts, chunk)
            )
    finally:
        model.train(was_training)
    acc = correct / max(len(examples), 1)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # every rank must take the same decision; rank 0's measurement is the one that counts
        t = torch.tensor([acc], dtype=torch.float64, device=model.device)
        torch.distributed.broadcast(t, src=0)
        acc = float(t)
    return acc
