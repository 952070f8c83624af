"""Engine benchmark: HF `generate` (the anchor) vs kava CoT vs kava latent, one process, one run.

The anchor is what a user would reach for instead: the same adapter merged into its base
(peft `merge_and_unload`), answering the same questions in CoT with `generate` (greedy,
left-padded batches, the method tokens suppressed as kava does). kava CoT and kava latent
run `kava.generate.solve_batch` — what the server and `kava eval` run. Each cell answers
every question in batches of its batch size and reports ms per question, accuracy (when
the questions carry answers), forward passes and generated tokens per question, tokens/s
and KV bytes per request; the ratios (kava CoT vs HF, latent vs kava CoT) come from the
same run. Every path answers one untimed batch first, so none pays start-up costs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from benchmarks.questions import Question
from kava.answers import extract_answer, same_number
from kava.backbone import KavaModel
from kava.generate import solve_batch
from kava.prompts import question_ids

PATHS = ("hf-generate", "kava-cot", "kava-latent")
GRAPHED = ("kava-cot+graphs", "kava-latent+graphs")  # solve_batch(graphs=True): CUDA graphs on CUDA


@dataclass(frozen=True)
class Cell:
    path: str
    batch_size: int
    questions: int
    ms_per_question: float
    accuracy: float | None  # None when the questions carry no answers
    passes_per_question: float  # forward passes a question took part in (HF: its batch's steps)
    generated_tokens_per_question: float
    tokens_per_s: float
    kv_bytes_per_question: float | None  # kava only: KV a request held at its peak


class HFAnchor:
    """The adapter merged into its base, answering with `transformers` `generate`."""

    def __init__(self, merged: torch.nn.Module, model: KavaModel):
        self.lm, self.tok, self.ids = merged.eval(), model.tokenizer, model.ids
        self.answer_prompt = model.config.answer_prompt
        self.suppress = [model.ids.bot, model.ids.eot, model.ids.latent]

    @classmethod
    def merge(cls, model: KavaModel) -> HFAnchor:
        """Consumes `model`: pass a copy of the adapter loaded for this purpose."""
        lm = model.lm.merge_and_unload() if hasattr(model.lm, "merge_and_unload") else model.lm
        return cls(lm, model)

    @torch.inference_mode()
    def answer(self, questions: Sequence[str], max_new_tokens: int) -> tuple[list[str | None], list[int], int]:
        """Answers, generated tokens per question (through `<eos>`), generate steps. A
        negative `<eos>` id (a benchmark's fixed-length mode) never stops a row."""
        eos = self.ids.eos if self.ids.eos >= 0 else None
        rows = [question_ids(self.tok, q) for q in questions]
        width = max(len(r) for r in rows)
        ids = torch.tensor([[self.ids.pad] * (width - len(r)) + r for r in rows], device=self.lm.device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.lm.device)
        out = self.lm.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=eos,
            pad_token_id=self.ids.pad,
            suppress_tokens=self.suppress,
        )
        new = out[:, width:].tolist()
        counts = [row.index(eos) + 1 if eos in row else len(row) for row in new]
        texts = [self.tok.decode(row[:n], skip_special_tokens=True) for row, n in zip(new, counts)]
        return [extract_answer(t, self.answer_prompt) for t in texts], counts, out.shape[1] - width


def _cell(path: str, b: int, n: int, wall: float, correct: int | None, passes: float, tokens: float, kv) -> Cell:
    return Cell(
        path=path,
        batch_size=b,
        questions=n,
        ms_per_question=1000 * wall / n,
        accuracy=None if correct is None else correct / n,
        passes_per_question=passes / n,
        generated_tokens_per_question=tokens / n,
        tokens_per_s=tokens / wall,
        kv_bytes_per_question=None if kv is None else kv / n,
    )


def measure(
    path: str, model: KavaModel, anchor: HFAnchor | None, questions: Sequence[Question], b: int, limit: int
) -> Cell:
    """One path answers every question in batches of `b`."""
    graded = all(q.answer is not None for q in questions)
    wall, correct, passes, tokens, kv = 0.0, 0, 0.0, 0.0, 0.0
    for start in range(0, len(questions), b):
        chunk = questions[start : start + b]
        texts = [q.text for q in chunk]
        t0 = time.perf_counter()
        if path == "hf-generate":
            answers, counts, steps = anchor.answer(texts, limit)
            wall += time.perf_counter() - t0
            passes += steps * len(chunk)
            tokens += sum(counts)
        else:
            mode, graphs = path.removeprefix("kava-").removesuffix("+graphs"), path.endswith("+graphs")
            out = solve_batch(model, texts, mode=mode, max_new_tokens=limit, graphs=graphs).results
            wall += time.perf_counter() - t0
            answers = [r.answer for r in out]
            passes += sum(r.forward_passes for r in out)
            tokens += sum(r.generated_tokens for r in out)
            kv += sum(r.kv_cache_bytes for r in out)
        correct += sum(same_number(a, q.answer) for a, q in zip(answers, chunk)) if graded else 0
    return _cell(
        path, b, len(questions), wall, correct if graded else None, passes, tokens, None if path == PATHS[0] else kv
    )


def bench_engine(
    model: KavaModel,
    questions: Sequence[Question],
    *,
    batch_sizes: Sequence[int] = (1, 8, 32),
    max_new_tokens: dict[str, int] | None = None,
    anchor: HFAnchor | None = None,
    graphs: bool = False,
) -> dict:
    """Every path at every batch size; returns {"cells": [...], "ratios": [...], ...}. With
    `graphs`, kava CoT and latent also run with fixed-shape passes (CUDA graphs on CUDA)."""
    limits = max_new_tokens or {"latent": 32, "cot": 256}
    paths = [p for p in PATHS if anchor is not None or p != "hf-generate"] + (list(GRAPHED) if graphs else [])
    limit = {p: limits["latent" if "latent" in p else "cot"] for p in paths}
    for path in paths:  # untimed: first-call costs (allocation, merged weights) land here
        measure(path, model, anchor, questions[:2], 2, 2)
    cells = [
        measure(path, model, anchor, questions, b, limit[path])
        for b, path in tqdm([(b, p) for b in batch_sizes for p in paths], desc="engine bench", unit="cell")
    ]
    return {"questions": len(questions), "max_new_tokens": limits, "cells": [asdict(c) for c in cells],
            "ratios": [_ratios(cells, b) for b in batch_sizes]}  # fmt: skip


def _ratios(cells: list[Cell], b: int) -> dict:
    at = {c.path: c for c in cells if c.batch_size == b}
    hf, cot, lat = at.get("hf-generate"), at["kava-cot"], at["kava-latent"]
    return {
        "batch_size": b,
        "kava_cot_vs_hf_speed": hf.ms_per_question / cot.ms_per_question if hf else None,
        "latent_vs_cot_speed": cot.ms_per_question / lat.ms_per_question,
        "latent_vs_cot_passes": cot.passes_per_question / lat.passes_per_question,
        "latent_vs_cot_kv_bytes": lat.kv_bytes_per_question / cot.kv_bytes_per_question,
    }


def engine_table(report: dict) -> str:
    head = (
        "| path | batch | ms / q | accuracy | passes / q | generated tokens / q | tok/s | KV bytes / q |\n"
        + "|---" * 8
        + "|"
    )
    rows = [
        f"| {c['path']} | {c['batch_size']} | {c['ms_per_question']:.1f} | {_pct(c['accuracy'])} | "
        f"{c['passes_per_question']:.1f} | {c['generated_tokens_per_question']:.1f} | {c['tokens_per_s']:.0f} | "
        f"{_num(c['kv_bytes_per_question'], '.0f')} |"
        for c in report["cells"]
    ]
    ratio_head = (
        "\n\n| batch | kava CoT speed / HF generate | latent speed / kava CoT | CoT passes / latent passes "
        "| latent KV / CoT KV |\n|---|---|---|---|---|"
    )
    ratio_rows = [
        f"| {r['batch_size']} | {_x(r['kava_cot_vs_hf_speed'])} | {_x(r['latent_vs_cot_speed'])} | "
        f"{_x(r['latent_vs_cot_passes'])} | {_x(r['latent_vs_cot_kv_bytes'])} |"
        for r in report["ratios"]
    ]
    note = f"\n\n{report['questions']} questions per cell, all cells in one run; ms / q = wall time / questions.\n"
    return "\n".join([head, *rows]) + ratio_head + "\n" + "\n".join(ratio_rows) + note


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, fmt: str) -> str:
    return "n/a" if x is None else format(x, fmt)


def _x(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}x"
