"""Helpers for the end-to-end tests: child processes with their logs, polling, and the
Prometheus HTTP API. The fixtures that use them live in `conftest.py`."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS, PROMTOOL = shutil.which("prometheus"), shutil.which("promtool")
MISSING = [name for name, path in (("prometheus", PROMETHEUS), ("promtool", PROMTOOL)) if path is None]
NEEDS_PROMETHEUS = pytest.mark.skipif(
    bool(MISSING),
    reason=f"{' and '.join(MISSING)} not on PATH: apt-get install prometheus (Debian's package has both)",
)
QUESTIONS = [
    "Tom has 3 apples and buys 4 more. How many apples does he have?",
    "A box holds 12 pens and 5 are red. How many are not red?",
    "Sara reads 6 pages a day for 5 days. How many pages?",
    "There are 20 cookies shared by 4 kids. How many does each get?",
    "A farmer has 7 cows and buys 8 more. How many cows now?",
]
SERVER_START_S = 180.0  # importing torch + transformers on a busy 2-core CI box takes a while
SCRAPE_DEADLINE_S = 60.0


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


def scraped(prometheus_url: str, promql: str, at_least: float) -> bool:
    value = scalar(prometheus_url, promql)
    return value is not None and value >= at_least
