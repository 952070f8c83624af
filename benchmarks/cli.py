"""`kava bench`: HF generate vs kava CoT vs kava latent, and served throughput (reports, never asserts).

  kava bench engine   [--adapter DIR] [--batch-sizes 1,8,32] [--questions held-out|gsm8k|FILE.jsonl] [-n 64]
                      [--graphs]
  kava bench serving  [--url URL [--baseline-url URL]] [--requests N] [--rate R | --concurrency C]
                      [--mode latent|cot] [--cot-share 0.5]
  kava bench passes  [--batch-sizes 1,32] [--compile]
  kava bench all      engine and serving

`engine` loads the adapter here (default: the built-in model) twice — once for kava, once
merged for the HF `generate` anchor (`--no-anchor` skips it) — and runs
`benchmarks.engine`. `serving` drives a running server (`--url`); without one it starts
two `kava serve` processes over the adapter in turn — batched (`--max-batch-size`) and one
request at a time (`--max-batch-size 1`) — and gives both the same load
(`benchmarks.serving`); `--cot-share 0.5` makes it a mixed load (half latent, half CoT) and
adds the latent-only control. `passes` times one fast-path forward pass of each shape the
phases run (decode, Jacobi, prefill), eager and with `--compile` (`benchmarks.passes`).
Output: the JSON report, then markdown tables, on stdout; `--out DIR` also writes bench.json
and bench.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path

from benchmarks.engine import HFAnchor, bench_engine, engine_table
from benchmarks.passes import bench_passes, passes_table
from benchmarks.questions import SOURCES, load_questions
from benchmarks.serving import Load, bench_serving, compare, run_load, serving_table, spawned_server
from kava.adapters import AdapterError, load_adapter
from kava.builtin import BUILTIN_ADAPTER, builtin_available

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    what = ["engine", "serving", "passes", "all"]
    add("what", nargs="?", choices=what, default="engine", help="which benchmark (engine)")
    add("--adapter", type=Path, help="adapter directory (default: the built-in model)")
    add("--base-model", help="base model override for the adapter")
    add("--device", default="auto")
    add("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    add("--questions", default="held-out", help=f"{' | '.join(SOURCES)} | a JSONL file with 'question' (+ 'answer')")
    add("-n", "--num-questions", type=int, default=64, help="engine: questions per cell (cycled if fewer)")
    add("--batch-sizes", default="1,8,32", help="engine: comma-separated batch sizes")
    add("--max-new-tokens-latent", type=int, default=32)
    add("--max-new-tokens-cot", type=int, default=256)
    add("--no-anchor", action="store_true", help="engine: skip the HF generate row")
    add("--graphs", action="store_true", help="engine: also kava with fixed-shape passes (CUDA graphs on CUDA)")
    add("--compile", action="store_true", help="passes: also time the pass under torch.compile")
    add("--url", help="serving: a running server (otherwise two are started here)")
    add("--baseline-url", help="serving: a server started with --max-batch-size 1")
    add("--api-key", default=os.environ.get("KAVA_API_KEY"), help="serving: key for the server(s) (KAVA_API_KEY)")
    add("--requests", type=int, default=64, help="serving: requests per target")
    add("--rate", type=float, help="serving: Poisson arrivals at this many req/s (default: fixed concurrency)")
    add("--concurrency", type=int, default=8, help="serving: clients in the fixed-concurrency mode")
    add("--mode", choices=["latent", "cot"], default="latent", help="serving: request mode")
    add("--cot-share", type=float, default=0.0, help="serving: fraction of requests in cot mode (mixed load)")
    add("--max-batch-size", type=int, default=32, help="serving: batch limit of the server started here")
    add("--no-baseline", action="store_true", help="serving: skip the one-at-a-time server")
    add("--seed", type=int, default=0)
    add("--out", type=Path, help="directory for bench.json and bench.md")


def _adapter(args: argparse.Namespace) -> Path:
    if args.adapter is not None:
        return args.adapter
    if not builtin_available():
        raise SystemExit(
            "the built-in model is not built yet: build it with `python -m training.builtin`, or pass --adapter DIR"
        )
    return BUILTIN_ADAPTER


def _serving(args: argparse.Namespace, questions: list[str]) -> dict:
    limits = {"latent": args.max_new_tokens_latent, "cot": args.max_new_tokens_cot}
    load = Load(args.requests, args.rate, args.concurrency, args.mode, args.cot_share, limits, args.seed)
    if args.url:
        return bench_serving(args.url, questions, load, baseline_url=args.baseline_url, api_key=args.api_key)
    serve = ["--adapter", f"bench={_adapter(args)}", "--device", args.device, "--dtype", args.dtype]
    serve += ["--base-model", args.base_model] if args.base_model else []
    env = {"KAVA_API_KEY": args.api_key} if args.api_key else None
    key = args.api_key
    with spawned_server([*serve, "--max-batch-size", str(args.max_batch_size)], env=env) as url:
        batched = asyncio.run(run_load(url, questions, load, api_key=key))
        control = None
        if load.cot_share:  # the mixed load's latent requests alone, at the same arrival times
            control = asyncio.run(run_load(url, questions, replace(load, only=args.mode), api_key=key))
    baseline = None
    if not args.no_baseline:
        with spawned_server([*serve, "--max-batch-size", "1"], env=env) as url:
            baseline = asyncio.run(run_load(url, questions, load, api_key=key))
    kind = "server with max_batch_size=1" if baseline is not None else "none (--no-baseline)"
    return compare(load, batched, baseline, kind, control)


def _load(args: argparse.Namespace):
    """The adapter under test, or None after logging why it cannot be loaded."""
    try:
        return load_adapter(_adapter(args), base_model=args.base_model, device=args.device, dtype=args.dtype)
    except AdapterError as exc:
        log.error("%s", exc)
        return None


def run(args: argparse.Namespace) -> int:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would bury the report
    try:
        questions = load_questions(args.questions, args.num_questions)
        sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    except (OSError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    report: dict = {"questions_source": args.questions}
    tables = []
    if args.what in ("engine", "all"):
        model, merged = _load(args), None if args.no_anchor else _load(args)
        if model is None or (merged is None and not args.no_anchor):
            return 2
        anchor = None if merged is None else HFAnchor.merge(merged)
        limits = {"latent": args.max_new_tokens_latent, "cot": args.max_new_tokens_cot}
        report["engine"] = bench_engine(
            model, questions, batch_sizes=sizes, max_new_tokens=limits, anchor=anchor, graphs=args.graphs
        )
        report["engine"].update(adapter=str(_adapter(args)), device=str(model.device), dtype=str(model.dtype))
        tables.append("## Engine: HF generate vs kava CoT vs kava latent\n\n" + engine_table(report["engine"]))
    if args.what == "passes":
        model = _load(args)
        if model is None:
            return 2
        report["passes"] = bench_passes(model, batch_sizes=sizes, compile=args.compile)
        tables.append("## One forward pass of each shape\n\n" + passes_table(report["passes"]))
    if args.what in ("serving", "all"):
        report["serving"] = _serving(args, [q.text for q in questions])
        tables.append("## Serving\n\n" + serving_table(report["serving"]))
    text = json.dumps(report, indent=2)
    markdown = "\n".join(tables)
    sys.stdout.write(text + "\n\n" + markdown)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench.json").write_text(text + "\n")
        (args.out / "bench.md").write_text(markdown)
        log.info("wrote %s and %s", args.out / "bench.json", args.out / "bench.md")
    return 0
