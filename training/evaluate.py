"""`kava eval`: accuracy, forward passes, tokens and wall time per question, latent vs CoT.

Runs questions through `kava.generate.solve_batch` — the same batched function the server
calls — and compares answers as numbers. With no arguments it evaluates the built-in
adapter on the built-in held-out set in both modes. Output: one JSON object (`--json`)
and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from kava.answers import same_number
from kava.backbone import KavaModel
from kava.builtin import BUILTIN_ADAPTER
from kava.generate import solve_batch
from kava.prompts import Example

log = logging.getLogger(__name__)

DEFAULT_MAX_NEW = {"latent": 16, "cot": 96}
# Questions written by hand the way people ask (not by the generator); `kava eval` on the
# built-in task reports them as their own row when the file is there (a source checkout).
HANDWRITTEN = Path(__file__).resolve().parents[1] / "tests" / "data" / "handwritten.jsonl"


def evaluate(
    model: KavaModel,
    examples: Sequence[Example],
    *,
    mode: str = "latent",
    batch_size: int = 32,
    max_new_tokens: int | None = None,
    num_iterations: int | None = None,
    progress: bool = True,
    keep_records: bool = False,
) -> dict[str, Any]:
    """Accuracy and per-question costs of `model` on `examples` in `mode`."""
    max_new = max_new_tokens or DEFAULT_MAX_NEW[mode]
    totals = {
        "forward_passes": 0,
        "prompt_tokens": 0,
        "latent_tokens": 0,
        "generated_tokens": 0,
        "kv_cache_bytes": 0,
    }
    records, right = [], []
    t0 = time.perf_counter()
    bar = tqdm(total=len(examples), desc=f"eval {mode}", disable=not progress, leave=False)
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        out = solve_batch(
            model, [e.question for e in chunk], mode=mode, max_new_tokens=max_new, num_iterations=num_iterations
        )
        for ex, r in zip(chunk, out.results):
            ok = same_number(r.answer, ex.answer)
            right.append(ok)
            for k in ("forward_passes", "prompt_tokens", "latent_tokens", "generated_tokens", "kv_cache_bytes"):
                totals[k] += getattr(r, k)
            if keep_records:
                records.append(
                    {
                        "question": ex.question,
                        "reference": ex.answer,
                        "predicted": r.answer,
                        "text": r.text,
                        "correct": ok,
                    }
                )
        bar.update(len(chunk))
    bar.close()
    wall = time.perf_counter() - t0
    n = max(len(examples), 1)
    result: dict[str, Any] = {
        "mode": mode,
        "n": len(examples),
        "accuracy": sum(right) / n,
        "correct": sum(right),
        "forward_passes_per_question": totals["forward_passes"] / n,
        "prompt_tokens_per_question": totals["prompt_tokens"] / n,
        "latent_tokens_per_question": totals["latent_tokens"] / n,
        "generated_tokens_per_question": totals["generated_tokens"] / n,
        "kv_cache_bytes_per_question": totals["kv_cache_bytes"] / n,
        "seconds_per_question": wall / n,
        "wall_seconds": wall,
        "batch_size": batch_size,
        "by": breakdown(examples, right),
    }
    if keep_records:
        result["records"] = records
    return result


_OPERATION = re.compile(r"\d\s*([-+*/])\s*\d")


def breakdown(examples: Sequence[Example], right: Sequence[bool]) -> dict[str, dict[str, dict[str, float]]]:
    """Accuracy by the number of written steps and by the last step's operation (+ - * /;
    "?" where none is written): where a mode goes wrong, not only how often."""
    groups: dict[str, dict[str, list[bool]]] = {"steps": {}, "last_op": {}}
    for ex, ok in zip(examples, right):
        op = _OPERATION.search(ex.steps[-1]) if ex.steps else None
        groups["steps"].setdefault(str(len(ex.steps)), []).append(ok)
        groups["last_op"].setdefault(op.group(1) if op else "?", []).append(ok)
    return {
        name: {k: {"n": len(v), "accuracy": sum(v) / len(v)} for k, v in sorted(g.items())}
        for name, g in groups.items()
    }


def breakdown_table(results: dict[str, dict[str, Any]]) -> str:
    """One row per mode: accuracy (n) per step count, then per last operation."""
    cols = [
        (name, k) for name in ("steps", "last_op") for k in sorted({k for r in results.values() for k in r["by"][name]})
    ]
    label = {"steps": "{} steps", "last_op": "last {}"}
    head = "| mode | " + " | ".join(label[name].format(k) for name, k in cols) + " |"
    rows = [head, "|---" * (len(cols) + 1) + "|"]
    for mode, r in results.items():
        cells = [r["by"][name].get(k) for name, k in cols]
        rows.append(f"| {mode} | " + " | ".join(
            "–" if c is None else f"{100 * c['accuracy']:.1f}% ({c['n']})" for c in cells) + " |")  # fmt: skip
    return "\n".join(rows)


def markdown_table(results: dict[str, dict[str, Any]]) -> str:
    head = "| mode | n | accuracy | forward passes / q | generated tokens / q | KV bytes / q | s / q |"
    rows = [head, "|---|---|---|---|---|---|---|"]
    for mode, r in results.items():
        rows.append(
            f"| {mode} | {r['n']} | {100 * r['accuracy']:.1f}% | {r['forward_passes_per_question']:.1f} | "
            f"{r['generated_tokens_per_question']:.1f} | {r['kv_cache_bytes_per_question']:.0f} | "
            f"{r['seconds_per_question']:.4f} |"
        )
    return "\n".join(rows)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--adapter", default=str(BUILTIN_ADAPTER), help="adapter directory (default: the built-in one)")
    p.add_argument("--base-model", default=None, help="override the base model recorded in the adapter")
    p.add_argument("--data", default="builtin", help="builtin (held-out split) | file path | hub:owner/name")
    p.add_argument("--style", default="equation", choices=["equation", "nl"])
    p.add_argument(
        "--max-value",
        type=int,
        default=None,
        help="with --data builtin: the task's largest number (default: the one the adapter was trained on, else 100)",
    )
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N problems")
    p.add_argument("--modes", default="latent,cot", help="comma list of latent,cot")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--num-iterations", type=int, default=None, help="override T for latent mode")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--out", type=Path, default=None, help="also write JSON (+ .md) here")
    p.add_argument("--records", action="store_true", help="include every question's prediction in the JSON")
    p.add_argument(
        "--handwritten",
        type=Path,
        default=HANDWRITTEN,
        help="hand-written questions reported as their own row with --data builtin ('' to skip)",
    )
    p.add_argument(
        "--rephrased",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with --data builtin, also the held-out problems asked the way people ask, as their own row",
    )


def trained_max_value(manifest) -> int:
    """The built-in task an adapter was trained on (its recorded `data.max_value`), else 100."""
    from training.data.task import MAX_VALUE

    data = manifest.extra.get("train_config", {}).get("data", {})
    value = data.get("max_value", MAX_VALUE) if data.get("train", "builtin") == "builtin" else MAX_VALUE
    return value if isinstance(value, int) else MAX_VALUE


def run(args: argparse.Namespace) -> int:
    from kava.adapters import load_adapter, read_manifest
    from training.data.task import Shape, held_out_rephrased, resolve_examples

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in DEFAULT_MAX_NEW]
    if bad:
        raise SystemExit(f"--modes: unknown mode(s) {bad}; choose from latent,cot")
    manifest = read_manifest(args.adapter)  # read once: the task it was trained on, then the weights
    if args.max_value is None:
        args.max_value = trained_max_value(manifest)
    shape = Shape(max_value=args.max_value)
    examples = resolve_examples(args.data, style=args.style, n=args.limit, split="eval", shape=shape)
    model = load_adapter(manifest, base_model=args.base_model, device=args.device, dtype=args.dtype)

    def run_modes(exs: Sequence[Example]) -> dict[str, dict[str, Any]]:
        return {
            m: evaluate(
                model,
                exs,
                mode=m,
                batch_size=args.batch_size,
                max_new_tokens=args.max_new_tokens,
                num_iterations=args.num_iterations,
                progress=not args.json,
                keep_records=args.records,
            )
            for m in modes
        }

    results = run_modes(examples)
    summary: dict[str, Any] = {"adapter": str(args.adapter), "data": args.data, "style": args.style}
    summary |= {"max_value": args.max_value, **results}
    summary |= _comparison(results)
    tables = [markdown_table(results), "by step count and last operation:\n" + breakdown_table(results)]
    hand = args.handwritten  # a Path; '' becomes Path('.'), not a file, so it skips
    if args.data == "builtin" and hand.is_file():
        hand_ex = resolve_examples(str(hand), style=args.style, n=args.limit, split="eval")
        hand_results = run_modes(hand_ex)
        summary["handwritten"] = {"data": str(hand), **hand_results, **_comparison(hand_results)}
        tables.append(f"hand-written questions ({len(hand_ex)}):\n" + markdown_table(hand_results))
    if args.data == "builtin" and args.rephrased:
        re_ex = held_out_rephrased(args.style, args.limit or len(examples), max_value=args.max_value)
        re_results = run_modes(re_ex)
        summary["rephrased"] = {**re_results, **_comparison(re_results)}
        tables.append(f"held-out, asked the way people ask ({len(re_ex)}):\n" + markdown_table(re_results))
    text = json.dumps(summary, indent=2)
    print(text if args.json else "\n\n".join(tables))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        args.out.with_suffix(".md").write_text("\n\n".join(tables) + "\n")
    return 0


def _comparison(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    if "latent" not in results or "cot" not in results:
        return {}
    lat, cot = results["latent"], results["cot"]
    return {
        "latent_vs_cot": {
            "forward_pass_ratio": cot["forward_passes_per_question"] / max(lat["forward_passes_per_question"], 1e-9),
            "speedup": cot["seconds_per_question"] / max(lat["seconds_per_question"], 1e-9),
            "accuracy_ratio": lat["accuracy"] / cot["accuracy"] if cot["accuracy"] else None,
        }
    }
