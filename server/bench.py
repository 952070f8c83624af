"""`kava bench`: report latent vs CoT engine cost and served throughput (reports, never asserts).

  kava bench engine   [--adapter DIR] [--batch-sizes 1,8,32] [--questions FILE.jsonl]
  kava bench serving  [--url URL [--baseline-url URL]] [--requests N] [--rate R | --concurrency C]
  kava bench all      both

`engine` loads the adapter here (default: the built-in model) and runs `server.bench_engine`.
`serving` drives a running server (`--url`); without one it starts two `kava serve`
processes over the adapter in turn — batched (`--max-batch-size`) and one request at a
time (`--max-batch-size 1`) — and gives both the same load (`server.bench_serving`).
Output: the JSON report, then markdown tables, on stdout; `--out DIR` also writes
bench.json and bench.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path

from kava.adapters import AdapterError, load_adapter
from kava.builtin import BUILTIN_ADAPTER, builtin_available
from server.bench_engine import bench_engine, engine_table, load_questions
from server.bench_serving import Load, bench_serving, compare, run_load, serving_table, spawned_server

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("what", nargs="?", choices=["engine", "serving", "all"], default="engine", help="which benchmark (engine)")
    add("--adapter", type=Path, help="adapter directory (default: the built-in model)")
    add("--base-model", help="base model override for the adapter")
    add("--device", default="auto")
    add("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    add("--questions", type=Path, help='JSONL file with a "question" per line (default: a built-in GSM-style list)')
    add("--batch-sizes", default="1,8,32", help="engine: comma-separated batch sizes")
    add("--max-new-tokens-latent", type=int, default=32)
    add("--max-new-tokens-cot", type=int, default=256)
    add("--url", help="serving: a running server (otherwise two are started here)")
    add("--baseline-url", help="serving: a server started with --max-batch-size 1")
    add("--api-key", default=os.environ.get("KAVA_API_KEY"), help="serving: key for the server(s) (KAVA_API_KEY)")
    add("--requests", type=int, default=64, help="serving: requests per target")
    add("--rate", type=float, help="serving: Poisson arrivals at this many req/s (default: fixed concurrency)")
    add("--concurrency", type=int, default=8, help="serving: clients in the fixed-concurrency mode")
    add("--mode", choices=["latent", "cot"], default="latent", help="serving: request mode")
    add("--max-batch-size", type=int, default=32, help="serving: batch limit of the server started here")
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
    limit = args.max_new_tokens_latent if args.mode == "latent" else args.max_new_tokens_cot
    load = Load(args.requests, args.rate, args.concurrency, args.mode, limit, args.seed)
    if args.url:
        return bench_serving(args.url, questions, load, baseline_url=args.baseline_url, api_key=args.api_key)
    serve = ["--adapter", f"bench={_adapter(args)}", "--device", args.device, "--dtype", args.dtype]
    serve += ["--base-model", args.base_model] if args.base_model else []
    env = {"KAVA_API_KEY": args.api_key} if args.api_key else None
    results = []
    for batch in (args.max_batch_size, 1):
        with spawned_server([*serve, "--max-batch-size", str(batch)], env=env) as url:
            results.append(asyncio.run(run_load(url, questions, load, api_key=args.api_key)))
    return compare(load, *results, "server with max_batch_size=1")


def run(args: argparse.Namespace) -> int:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would bury the report
    try:
        questions = load_questions(args.questions)
        sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    except (OSError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    report: dict = {"questions": len(questions)}
    tables = []
    if args.what in ("engine", "all"):
        try:
            model = load_adapter(_adapter(args), base_model=args.base_model, device=args.device, dtype=args.dtype)
        except AdapterError as exc:
            log.error("%s", exc)
            return 2
        limits = {"latent": args.max_new_tokens_latent, "cot": args.max_new_tokens_cot}
        report["engine"] = bench_engine(model, questions, batch_sizes=sizes, max_new_tokens=limits)
        report["engine"]["adapter"] = str(_adapter(args))
        tables.append("## Engine: latent vs CoT\n\n" + engine_table(report["engine"]))
    if args.what in ("serving", "all"):
        report["serving"] = _serving(args, questions)
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
