"""End to end: `kava serve` in its own process, scraped by a real Prometheus, queried over its API.

The server is started the way a person starts it (`python -m kava_cli.main serve --adapter
tiny=PATH`, on a free loopback port, serving a tiny adapter saved to disk). Prometheus runs
the compose stack's scrape config (`deploy/prometheus/prometheus.yml`) pointed at that port and
sped up to 1 s. Requests go through the SDK; the test then asks Prometheus, as a dashboard
would, for the request count, the E2E latency count and the p99 TTFT. `promtool check
metrics` lints the exposition text. Skipped when `prometheus` or `promtool` is not on PATH
(Debian's `prometheus` package installs both; `.ci/run` installs it). Run with `-s` to see
the query results.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kava_client import Client
from tiny import make_model

from kava.adapters import save_adapter

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS, PROMTOOL = shutil.which("prometheus"), shutil.which("promtool")
MISSING = [name for name, path in (("prometheus", PROMETHEUS), ("promtool", PROMTOOL)) if path is None]

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        bool(MISSING),
        reason=f"{' and '.join(MISSING)} not on PATH: apt-get install prometheus (Debian's package has both)",
    ),
]

QUESTIONS = [
    "Tom has 3 apples and buys 4 more. How many apples does he have?",
    "A box holds 12 pens and 5 are red. How many are not red?",
    "Sara reads 6 pages a day for 5 days. How many pages?",
    "There are 20 cookies shared by 4 kids. How many does each get?",
    "A farmer has 7 cows and buys 8 more. How many cows now?",
]
SERVER_START_S = 180.0  # importing torch + transformers on a busy 2-core CI box takes a while
SCRAPE_DEADLINE_S = 60.0
TTFT_P99 = "histogram_quantile(0.99, sum by (le) (rate(kava_time_to_first_token_seconds_bucket[1m])))"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    with log.open("wb") as out:  # the child keeps its own handle; a file never fills up like a pipe
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def tail(log: Path, lines: int = 40) -> str:
    text = log.read_text(errors="replace") if log.exists() else "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def wait_for(what: str, check: Callable[[], Any], timeout: float, proc: subprocess.Popen, log: Path) -> Any:
    """Poll `check` until it returns something truthy; fail with the process' log if it dies or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{what}: the process exited with {proc.returncode}; its log ends:\n{tail(log)}")
        try:
            value = check()
        except httpx.TransportError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not reached within {timeout:.0f} s; the log of {proc.args[0]} ends:\n{tail(log)}")
        time.sleep(0.25)


@pytest.fixture(scope="module")
def kava_server(tiny_bases, tmp_path_factory) -> Iterator[str]:
    """`kava serve` over a tiny adapter on a free loopback port; yields its base URL."""
    root = tmp_path_factory.mktemp("e2e-kava")
    adapter = save_adapter(make_model(tiny_bases["llama"], seed=1), root / "tiny")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAVA_")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "kava_cli.main", "serve", "--adapter", f"tiny={adapter}"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--log-level", "warning"]
    log = root / "kava-serve.log"
    proc = start(cmd, log, env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for("kava serve /ready", lambda: httpx.get(f"{url}/ready").status_code == 200, SERVER_START_S, proc, log)
        yield url
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def prometheus(kava_server, tmp_path_factory) -> Iterator[str]:
    """Prometheus scraping `kava_server` every second with the compose stack's job; yields its URL."""
    root = tmp_path_factory.mktemp("e2e-prometheus")
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    (job,) = config["scrape_configs"]
    job.update(scrape_interval="1s", scrape_timeout="1s")
    job["static_configs"][0]["targets"] = [kava_server.removeprefix("http://")]
    config_file = root / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    checked = subprocess.run([PROMTOOL, "check", "config", str(config_file)], capture_output=True, text=True)
    assert checked.returncode == 0, f"promtool check config:\n{checked.stdout}{checked.stderr}"
    port = free_port()
    cmd = [PROMETHEUS, f"--config.file={config_file}", f"--storage.tsdb.path={root / 'data'}"]
    cmd += [f"--web.listen-address=127.0.0.1:{port}"]
    log = root / "prometheus.log"
    proc = start(cmd, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for("prometheus /-/ready", lambda: httpx.get(f"{url}/-/ready").status_code == 200, 30, proc, log)
        yield url
    finally:
        stop(proc)
        if proc.returncode not in (0, -15):
            print(f"prometheus exited with {proc.returncode}:\n{tail(log)}")


def query(prometheus_url: str, promql: str) -> list[dict[str, Any]]:
    """The instant vector of `promql` (Prometheus HTTP API)."""
    response = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": promql}, timeout=5)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", f"{promql}: {body}"
    return body["data"]["result"]


def scalar(prometheus_url: str, promql: str) -> float | None:
    result = query(prometheus_url, promql)
    return float(result[0]["value"][1]) if result else None


def poll(check: Callable[[], bool], timeout: float = SCRAPE_DEADLINE_S) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def test_prometheus_scrapes_requests_latency_and_ttft(kava_server, prometheus):
    def scraped(promql: str, at_least: float) -> bool:
        value = scalar(prometheus, promql)
        return value is not None and value >= at_least

    assert poll(lambda: scraped('up{job="kava"}', 1)), f"Prometheus never scraped {kava_server}/metrics"
    with Client(base_url=kava_server, max_retries=0) as client:
        # One request first, seen by a scrape, then the rest: the TTFT buckets then grow between
        # two samples, so rate() and the quantile have a finite value (not NaN).
        client.solve(QUESTIONS[0])
        assert poll(lambda: scraped('sum(kava_requests_total{outcome="ok"})', 1)), "the first request was not scraped"
        for i, question in enumerate(QUESTIONS[1:]):
            client.solve(question, mode="cot" if i == 0 else "latent", max_new_tokens=4)

    checks = {
        'sum(kava_requests_total{outcome="ok"})': lambda v: v is not None and v >= 5,
        "sum(kava_e2e_request_latency_seconds_count)": lambda v: v is not None and v >= 5,
        TTFT_P99: lambda v: v is not None and math.isfinite(v) and v > 0,
    }
    seen: dict[str, float | None] = {}

    def all_true() -> bool:
        seen.update({promql: scalar(prometheus, promql) for promql in checks})
        return all(ok(seen[promql]) for promql, ok in checks.items())

    reached = poll(all_true)
    by_mode = {r["metric"].get("mode"): r["value"][1] for r in query(prometheus, 'kava_requests_total{outcome="ok"}')}
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
    assert "kava_time_to_first_token_seconds_bucket" in text
    result = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True)
    output = (result.stdout + result.stderr).strip()
    print(f"\npromtool check metrics (exit {result.returncode}): {output or '(no problems reported)'}")
    assert result.returncode == 0 and not output, f"promtool check metrics found problems:\n{output}"
