"""Serving benchmark: an async load generator (the SDK's `AsyncClient`) against running servers.

Load: N requests either with Poisson arrivals at `rate` req/s (open loop, as vLLM's
benchmark_serving does) or from `concurrency` clients each sending its next request when
the last one returns (closed loop). `cot_share` mixes modes: that fraction of requests (a
seeded draw) asks for CoT, the rest for latent. Reported per target and per mode:
completed, failed (by status), req/s, and p50/p90/p99 of
- TTFT from the server's own timings: queue + prefill + latent (arrival at the server to
  the first answer token, the same definition as kava_time_to_first_token_seconds);
- E2E measured by the client (request sent to response read).

Baseline: the same load against a server that runs one request at a time — a `kava serve`
started with `--max-batch-size 1` (`--baseline-url`, or spawned by `kava bench serving`
itself); given only `--url`, the baseline is the same N requests sent one at a time.
Mixed load adds its control: the latent requests alone, at the same arrival times, so the
latent p99 TTFT with and without CoT traffic come from the same run.
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
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import httpx
from kava_client import APIConnectionError, APIStatusError, AsyncClient
from tqdm.auto import tqdm


@dataclass(frozen=True)
class Load:
    requests: int = 64
    rate: float | None = None  # req/s with Poisson arrivals; None = fixed concurrency
    concurrency: int = 8
    mode: str = "latent"
    cot_share: float = 0.0  # fraction of requests in cot mode (the rest in `mode`)
    max_new_tokens: dict[str, int] | None = None  # per mode
    seed: int = 0
    only: str | None = None  # send only the requests of this mode (the mixed load's control)

    def describe(self) -> str:
        how = f"Poisson {self.rate:g} req/s" if self.rate else f"concurrency {self.concurrency}"
        what = f"{self.mode} + {self.cot_share:.0%} cot" if self.cot_share else self.mode
        only = f", {self.only} requests only" if self.only else ""
        return f"{self.requests} x {what}, {how}{only}"

    def plan(self) -> list[tuple[float, int, str]]:
        """(arrival offset s, question index, mode) per request, from the seed alone."""
        rng, at, out = random.Random(self.seed), 0.0, []
        for i in range(self.requests):
            at += rng.expovariate(self.rate) if self.rate else 0.0
            mode = "cot" if rng.random() < self.cot_share else self.mode
            out.append((at, i, mode))
        return [p for p in out if self.only is None or p[2] == self.only]


@dataclass
class Sample:
    mode: str
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
    out = {
        "completed": len(ok),
        "failed": len(samples) - len(ok),
        "failures": failures,
        "duration_s": duration_s,
        "req_per_s": len(ok) / duration_s if duration_s > 0 else None,
        "ttft_s": percentiles([s.ttft_s for s in ok]),
        "e2e_s": percentiles([s.e2e_s for s in ok]),
    }
    modes = sorted({s.mode for s in samples})
    if len(modes) > 1:
        out["by_mode"] = {m: summarize([s for s in samples if s.mode == m], duration_s) for m in modes}
    return out


async def run_load(url: str, questions: Sequence[str], load: Load, *, api_key: str | None = None) -> dict:
    limits = httpx.Limits(max_connections=max(load.concurrency, 256), max_keepalive_connections=256)
    plan = load.plan()
    samples: list[Sample] = []
    bar = tqdm(total=len(plan), desc=f"load {url}", unit="req", leave=False)
    async with (
        httpx.AsyncClient(timeout=600, limits=limits) as http,
        AsyncClient(url, api_key=api_key, max_retries=0, timeout=600, http_client=http) as client,
    ):

        async def one(i: int, mode: str) -> None:
            limit = (load.max_new_tokens or {}).get(mode)
            t0 = time.perf_counter()
            try:
                r = await client.solve(questions[i % len(questions)], mode=mode, max_new_tokens=limit)
            except APIStatusError as exc:
                samples.append(Sample(mode, exc.status_code, time.perf_counter() - t0))
            except APIConnectionError as exc:
                samples.append(Sample(mode, type(exc).__name__))
            else:
                t = r.timings_ms
                samples.append(Sample(mode, 200, time.perf_counter() - t0, (t.queue + t.prefill + t.latent) / 1000))
            bar.update()

        start = time.perf_counter()
        if load.rate:
            tasks = []
            for at, i, mode in plan:
                await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
                tasks.append(asyncio.ensure_future(one(i, mode)))
            await asyncio.gather(*tasks)
        else:
            todo = iter(plan)

            async def client_loop() -> None:
                for _, i, mode in todo:
                    await one(i, mode)

            await asyncio.gather(*(client_loop() for _ in range(load.concurrency)))
        duration = time.perf_counter() - start
    bar.close()
    return summarize(samples, duration)


def compare(load: Load, batched: dict, baseline: dict | None, baseline_kind: str, control: dict | None = None) -> dict:
    out = {"load": asdict(load), "batched": batched, "baseline": baseline, "baseline_kind": baseline_kind}
    a, b = batched["req_per_s"], baseline["req_per_s"] if baseline else None
    out["speedup"] = a / b if a and b else None
    if control is not None:  # the latent requests of a mixed load, alone
        mixed = batched.get("by_mode", {}).get("latent", batched)["ttft_s"]["p99"]
        alone = control["ttft_s"]["p99"]
        out["latent_alone"] = control
        out["latent_p99_ttft_mixed_vs_alone"] = mixed / alone if mixed and alone else None
    return out


def bench_serving(
    url: str, questions: Sequence[str], load: Load, *, baseline_url: str | None = None, api_key: str | None = None
) -> dict:
    """The load against `url` (+ the latent-only control for a mixed load), then the baseline."""
    batched = asyncio.run(run_load(url, questions, load, api_key=api_key))
    control = None
    if load.cot_share:
        control = asyncio.run(run_load(url, questions, replace(load, only=load.mode), api_key=api_key))
    if baseline_url is not None:
        baseline = asyncio.run(run_load(baseline_url, questions, load, api_key=api_key))
        return compare(load, batched, baseline, "server with max_batch_size=1", control)
    one_at_a_time = replace(load, rate=None, concurrency=1)
    baseline = asyncio.run(run_load(url, questions, one_at_a_time, api_key=api_key))
    return compare(load, batched, baseline, "sequential requests (one at a time)", control)


def serving_table(report: dict) -> str:
    head = "| target | mode | completed | failed | req/s | TTFT p50/p90/p99 ms | E2E p50/p90/p99 ms |\n"
    head += "|---" * 7 + "|"
    rows = []
    for name in ("batched", "latent_alone", "baseline"):
        r = report.get(name)
        if r is None:
            continue
        for mode, s in [("all", r), *sorted(r.get("by_mode", {}).items())]:
            rows.append(
                f"| {name} | {mode} | {s['completed']} | {s['failed']} | {_num(s['req_per_s'])} | "
                f"{_ms(s['ttft_s'])} | {_ms(s['e2e_s'])} |"
            )
    load = Load(**report["load"])
    note = f"\nLoad: {load.describe()}; baseline: {report['baseline_kind']}."
    if report["speedup"] is not None:
        note += f" Speedup {report['speedup']:.2f}x req/s."
    if "latent_p99_ttft_mixed_vs_alone" in report:
        note += f" Latent p99 TTFT, mixed / alone: {_num(report['latent_p99_ttft_mixed_vs_alone'])}x."
    return "\n".join([head, *rows]) + "\n" + note + "\n"


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
