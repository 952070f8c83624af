"""Engine benchmark: latent vs CoT decoding on the same adapter and questions, in one run.

For each batch size (default 1, 8, 32) both modes answer the same questions through
`kava.generate.solve_batch` — the function the server runs — and each cell reports
forward passes (per batch and per request), wall time, generated tokens/s, questions/s
and KV bytes per request; the ratios latent / CoT come from the same run. One untimed
solve per mode first, so neither mode pays the start-up costs. Questions come from a
JSONL file (`{"question": ...}` per line) or the small GSM-style list below.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from kava.backbone import KavaModel
from kava.generate import MODES, solve_batch

DEFAULT_QUESTIONS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?",
    "Betty is saving money for a new wallet which costs $100. Betty has only half of the money she needs. Her parents "
    "decided to give her $15 for that purpose, and her grandparents twice as much as her parents. "
    "How much more money does Betty need to buy the wallet?",
    "James writes a 3-page letter to 2 different friends twice a week. How many pages does he write a year?",
    "A robe takes 2 bolts of blue fiber and half that much white fiber. How many bolts in total does it take?",
    "Tina makes $18.00 an hour. If she works more than 8 hours per shift, she is eligible for overtime, which is "
    "paid by your hourly wage + 1/2 your hourly wage. If she works 10 hours every day for 5 days, "
    "how much money does she make?",
    "A bakery sells 24 muffins in the morning and 3 times as many in the afternoon. How many muffins does it sell?",
    "Tom has 5 boxes with 12 pencils each. He gives away 17 pencils. How many pencils does he have left?",
    "A train travels 60 miles per hour for 3 hours and then 40 miles per hour for 2 hours. How far does it go?",
    "Sara buys 4 notebooks at $3 each and 2 pens at $1.50 each. How much does she spend?",
    "A garden has 8 rows of 15 tomato plants. 23 plants die. How many plants are left?",
    "Mike reads 25 pages a day. How many days does he need to finish a 300-page book?",
    "There are 30 students in a class. 40% of them are boys. How many girls are in the class?",
    "A shirt costs $40 and is on sale for 25% off. What is the sale price?",
    "Anna has 3 times as many stickers as Ben. Together they have 48 stickers. How many stickers does Anna have?",
    "A tank holds 500 liters. It leaks 12 liters an hour for 15 hours. How many liters are left?",
]


def load_questions(path: str | Path | None) -> list[str]:
    """Questions from a JSONL file with a "question" field per line, or the built-in list."""
    if path is None:
        return list(DEFAULT_QUESTIONS)
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not isinstance(row, dict) or not isinstance(row.get("question"), str):
            raise ValueError(f"{path}:{n}: each line must be a JSON object with a string 'question'")
        out.append(row["question"])
    if not out:
        raise ValueError(f"{path}: no questions")
    return out


@dataclass(frozen=True)
class EngineCell:
    mode: str
    batch_size: int
    forward_passes: int  # batched forward calls for the whole batch
    passes_per_request: float  # mean of each request's own count
    wall_s: float
    generated_tokens: int
    tokens_per_s: float
    questions_per_s: float
    kv_bytes_per_request: float  # mean peak KV a request held (its own rows)
    peak_batch_kv_bytes: int  # padding included


def measure(model: KavaModel, questions: Sequence[str], mode: str, max_new_tokens: int) -> EngineCell:
    t0 = time.perf_counter()
    out = solve_batch(model, questions, mode=mode, max_new_tokens=max_new_tokens)
    wall = time.perf_counter() - t0
    res = out.results
    generated = sum(r.generated_tokens for r in res)
    return EngineCell(
        mode=mode,
        batch_size=len(questions),
        forward_passes=sum(out.stats.passes.values()),
        passes_per_request=sum(r.forward_passes for r in res) / len(res),
        wall_s=wall,
        generated_tokens=generated,
        tokens_per_s=generated / wall,
        questions_per_s=len(res) / wall,
        kv_bytes_per_request=sum(r.kv_cache_bytes for r in res) / len(res),
        peak_batch_kv_bytes=out.stats.peak_kv_bytes,
    )


def bench_engine(
    model: KavaModel,
    questions: Sequence[str],
    *,
    batch_sizes: Sequence[int] = (1, 8, 32),
    max_new_tokens: dict[str, int] | None = None,
) -> dict:
    """Both modes at every batch size; returns {"cells": [...], "ratios": [...]}."""
    limits = max_new_tokens or {"latent": 32, "cot": 256}
    for mode in MODES:  # untimed: first-call costs land here
        solve_batch(model, questions[:1], mode=mode, max_new_tokens=2)
    cells = []
    for b in tqdm([b for b in batch_sizes for _ in MODES], desc="engine bench", unit="batch"):
        mode = MODES[len(cells) % len(MODES)]
        batch = [questions[i % len(questions)] for i in range(b)]
        cells.append(measure(model, batch, mode, limits[mode]))
    ratios = []
    for b in batch_sizes:
        lat, cot = (next(c for c in cells if c.batch_size == b and c.mode == m) for m in ("latent", "cot"))
        ratios.append(
            {
                "batch_size": b,
                "passes_per_request": _ratio(lat.passes_per_request, cot.passes_per_request),
                "wall_s": _ratio(lat.wall_s, cot.wall_s),
                "questions_per_s": _ratio(lat.questions_per_s, cot.questions_per_s),
                "kv_bytes_per_request": _ratio(lat.kv_bytes_per_request, cot.kv_bytes_per_request),
            }
        )
    return {"max_new_tokens": limits, "cells": [asdict(c) for c in cells], "ratios": ratios}


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def engine_table(report: dict) -> str:
    head = "| mode | batch | passes/batch | passes/req | wall s | tok/s | q/s | KV B/req |\n" + "|---" * 8 + "|"
    rows = [
        f"| {c['mode']} | {c['batch_size']} | {c['forward_passes']} | {c['passes_per_request']:.1f} | "
        f"{c['wall_s']:.3f} | {c['tokens_per_s']:.1f} | {c['questions_per_s']:.2f} | {c['kv_bytes_per_request']:.0f} |"
        for c in report["cells"]
    ]
    ratio_head = "\n\n| batch | latent/CoT passes per req | wall | q/s | KV per req |\n|---|---|---|---|---|"
    ratio_rows = [
        f"| {r['batch_size']} | {_fmt(r['passes_per_request'])} | {_fmt(r['wall_s'])} | "
        f"{_fmt(r['questions_per_s'])} | {_fmt(r['kv_bytes_per_request'])} |"
        for r in report["ratios"]
    ]
    return "\n".join([head, *rows]) + ratio_head + "\n" + "\n".join(ratio_rows) + "\n"


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}x"
