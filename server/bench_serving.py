"""Serving benchmark: an async load generator against a running server, and its baseline.

Load: N requests either with Poisson arrivals at `rate` req/s (open loop, as vLLM's
benchmark_serving does) or from `concurrency` clients each sending its next request when
the last one returns (closed loop). Reported per target: completed, failed (by status),
req/s, and p50/p90/p99 of
- TTFT from the server's own timings: queue + prefill + latent (arrival at the server to
  the first answer token, the same definition as kava_time_to_first_token_seconds);
- E2E measured by the client (request sent to response read).

Baseline: the same load against a server that runs one request at a time — a `kava serve`
started with `--max-batch-size 1` (`--baseline-url`, or spawned by `kava bench serving`
itself); given only `--url`, the baseline is the same N requests sent sequentially.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
from tqdm.auto import tqdm


@dataclass(frozen=True)
class Load:
    requests: int = 64
    rate: float | None = None  # req/s with Poisson arrivals; None = fixed concurrency
    concurrency: int = 8
    mode: str = "latent"
    max_new_tokens: int | None = None
    seed: int = 0

    def describe(self) -> str:
        how = f"Poisson {self.rate:g} req/s" if self.rate else f"concurrency {self.concurrency}"
        return f"{self.requests} x {self.mode}, {how}"


@dataclass
class Sample:
    status: int | str  # HTTP status, or the transport error's name
    e2e_s: float = 0.0
    ttft_s: float = 0.0


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    """p50/p90/p99 with linear interpolation between order statistics."""
    xs = sorted(values)
    out: dict[str, float | None] = {}
    for q in (50, 90, 99):
        if not xs:
            out[f"p{q}"] = None
            continue
        pos = (len(xs) - 1) * q / 100
        lo, hi = int(pos), min(int(pos) + 1, len(xs) - 1)
        out[f"p{q}"] = xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)
    return out


def summarize(samples: Sequence[Sample], duration_s: float) -> dict:
    ok = [s for s in samples if s.status == 200]
    failures: dict[str, int] = {}
    for s in samples:
        if s.status != 200:
            failures[str(s.status)] = failures.get(str(s.status), 0) + 1
    return {
        "completed": len(ok),
        "failed": len(samples) - len(ok),
        "failures": failures,
        "duration_s": duration_s,
        "req_per_s": len(ok) / duration_s if duration_s > 0 else None,
        "ttft_s": percentiles([s.ttft_s for s in ok]),
        "e2e_s": percentiles([s.e2e_s for s in ok]),
    }


async def run_load(url: str, questions: Sequence[str], load: Load, *, api_key: str | None = None) -> dict:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=max(load.concurrency, 100), max_keepalive_connections=100)
    samples: list[Sample] = []
    bar = tqdm(total=load.requests, desc=f"load {url}", unit="req")
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600, limits=limits) as client:

        async def one(i: int) -> None:
            body: dict = {"question": questions[i % len(questions)], "mode": load.mode}
            if load.max_new_tokens is not None:
                body["max_new_tokens"] = load.max_new_tokens
            t0 = time.perf_counter()
            try:
                r = await client.post("/v1/solve", json=body)
            except httpx.HTTPError as exc:
                samples.append(Sample(type(exc).__name__))
            else:
                sample = Sample(r.status_code, time.perf_counter() - t0)
                if r.status_code == 200:
                    t = r.json()["timings_ms"]
                    sample.ttft_s = (t["queue"] + t["prefill"] + t["latent"]) / 1000
                samples.append(sample)
            bar.update()

        start = time.perf_counter()
        if load.rate:
            rng, at, tasks = random.Random(load.seed), 0.0, []
            for i in range(load.requests):
                at += rng.expovariate(load.rate)
                await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
                tasks.append(asyncio.ensure_future(one(i)))
            await asyncio.gather(*tasks)
        else:
            todo = iter(range(load.requests))

            async def client_loop() -> None:
                for i in todo:
                    await one(i)

            await asyncio.gather(*(client_loop() for _ in range(load.concurrency)))
        duration = time.perf_counter() - start
    bar.close()
    return summarize(samples, duration)


def compare(load: Load, batched: dict, baseline: dict, baseline_kind: str) -> dict:
    a, b = batched["req_per_s"], baseline["req_per_s"]
    return {
        "load": asdict(load),
        "batched": batched,
        "baseline": baseline,
        "baseline_kind": baseline_kind,
        "speedup": a / b if a and b else None,
    }


def bench_serving(
    url: str, questions: Sequence[str], load: Load, *, baseline_url: str | None = None, api_key: str | None = None
) -> dict:
    """The load against `url`, then against the baseline (see the module docstring)."""
    batched = asyncio.run(run_load(url, questions, load, api_key=api_key))
    if baseline_url is not None:
        baseline = asyncio.run(run_load(baseline_url, questions, load, api_key=api_key))
        return compare(load, batched, baseline, "server with max_batch_size=1")
    one_at_a_time = Load(load.requests, None, 1, load.mode, load.max_new_tokens, load.seed)
    baseline = asyncio.run(run_load(url, questions, one_at_a_time, api_key=api_key))
    return compare(load, batched, baseline, "sequential requests (one at a time)")


def serving_table(report: dict) -> str:
    head = (
        "| target | completed | failed | req/s | TTFT p50/p90/p99 ms | E2E p50/p90/p99 ms |\n|---|---|---|---|---|---|"
    )
    rows = []
    for name in ("batched", "baseline"):
        r = report[name]
        rows.append(
            f"| {name} | {r['completed']} | {r['failed']} | {_num(r['req_per_s'])} | "
            f"{_ms(r['ttft_s'])} | {_ms(r['e2e_s'])} |"
        )
    note = f"\nLoad: {Load(**report['load']).describe()}; baseline: {report['baseline_kind']}; "
    note += f"speedup {_num(report['speedup'])}x req/s.\n"
    return "\n".join([head, *rows]) + "\n" + note


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _ms(p: dict) -> str:
    return "/".join("n/a" if p[k] is None else f"{p[k] * 1000:.0f}" for k in ("p50", "p90", "p99"))


@contextlib.contextmanager
def spawned_server(
    serve_args: Sequence[str], *, env: dict[str, str] | None = None, startup_timeout_s: float = 900
) -> Iterator[str]:
    """A `kava serve` subprocess on a free loopback port; yields its URL, drains it after."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tempfile.NamedTemporaryFile("w+", prefix="kava-bench-serve-", suffix=".log", delete=False)
    cmd = [sys.executable, "-m", "kava_cli.main", "serve", "--port", str(port), "--log-level", "warning", *serve_args]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + startup_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"`{' '.join(cmd)}` exited with {proc.returncode}:\n{Path(log.name).read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            if time.monotonic() > end:
                raise TimeoutError(f"server not ready after {startup_timeout_s:g} s; log: {log.name}")
            time.sleep(0.5)
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()
