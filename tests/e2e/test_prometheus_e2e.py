"""End to end: `kava serve` in its own process, scraped by a real Prometheus, queried over its API.

The server and Prometheus come from `conftest.py` (the compose stack's scrape config, sped up
to 1 s). Requests go through the SDK; the test then asks Prometheus, as a dashboard would, for
the request count, the E2E latency count and the p99 TTFT. `promtool check metrics` lints the
exposition text. Skipped when `prometheus` or `promtool` is not on PATH (Debian's `prometheus`
package installs both; `.ci/run` installs it). Run with `-s` to see the query results.
"""

from __future__ import annotations

import math
import subprocess

import httpx
import pytest
from e2e_harness import NEEDS_PROMETHEUS, PROMTOOL, QUESTIONS, SCRAPE_DEADLINE_S, poll, query, scalar, scraped
from kava_client import Client

pytestmark = [pytest.mark.e2e, NEEDS_PROMETHEUS]

OK_BY_MODE = 'sum by (mode) (kava_requests_total{outcome="ok"})'
TTFT_P99 = "histogram_quantile(0.99, sum by (le) (rate(kava_time_to_first_token_seconds_bucket[1m])))"


def test_prometheus_scrapes_requests_latency_and_ttft(kava_server, prometheus):
    assert poll(lambda: scraped(prometheus, 'up{job="kava"}', 1)), f"Prometheus never scraped {kava_server}/metrics"
    ok = 'sum(kava_requests_total{outcome="ok"})'
    before = scalar(prometheus, ok) or 0.0
    with Client(base_url=kava_server, max_retries=0) as client:
        # One request first, seen by a scrape, then the rest: the TTFT buckets then grow between
        # two samples, so rate() and the quantile have a finite value (not NaN).
        client.solve(QUESTIONS[0])
        assert poll(lambda: scraped(prometheus, ok, before + 1)), "the first request was not scraped"
        for i, question in enumerate(QUESTIONS[1:]):
            client.solve(question, mode="cot" if i == 0 else "latent", max_new_tokens=4)

    checks = {
        ok: lambda v: v is not None and v >= before + 5,
        "sum(kava_e2e_request_latency_seconds_count)": lambda v: v is not None and v >= before + 5,
        TTFT_P99: lambda v: v is not None and math.isfinite(v) and v > 0,
    }
    seen: dict[str, float | None] = {}

    def all_true() -> bool:
        seen.update({promql: scalar(prometheus, promql) for promql in checks})
        return all(check(seen[promql]) for promql, check in checks.items())

    reached = poll(all_true)
    by_mode = {r["metric"].get("mode"): r["value"][1] for r in query(prometheus, OK_BY_MODE)}
    print("\nPrometheus query results (scraping kava serve every 1 s):")
    for promql, value in seen.items():
        print(f"  {promql}\n    = {value}")
    print(f'  kava_requests_total{{outcome="ok"}} by mode = {by_mode}')
    assert reached, f"within {SCRAPE_DEADLINE_S:.0f} s Prometheus answered {seen}"
    assert by_mode.get("cot") is not None and by_mode.get("latent") is not None


def test_promtool_finds_no_problems_in_the_metrics(kava_server):
    with Client(base_url=kava_server, max_retries=0) as client:
        client.solve(QUESTIONS[0], return_latents=True)  # every labelled family has a sample
    text = httpx.get(f"{kava_server}/metrics").text
    assert "kava_time_to_first_token_seconds_bucket" in text and "process_resident_memory_bytes" in text
    result = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True)
    output = (result.stdout + result.stderr).strip()
    print(f"\npromtool check metrics (exit {result.returncode}): {output or '(no problems reported)'}")
    assert result.returncode == 0 and not output, f"promtool check metrics found problems:\n{output}"
