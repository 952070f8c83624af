"""The Grafana dashboard against a real Prometheus scraping a live `kava serve`.

Grafana itself is not needed to know whether a panel will draw: every panel's PromQL, with
Grafana's variables filled in the way Grafana fills them (`$__rate_interval` -> a window,
`$adapter` -> its "All" value, then the one adapter that served), is sent to the Prometheus
of `conftest.py` after the server has answered latent and CoT requests, and must return at
least one series with a finite value; a query grouped by mode must have both modes. The
adapter variable's own query must list both served adapters. Skipped when `prometheus` or
`promtool` is not on PATH. Run with `-s` to see every query's answer.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pytest
from e2e_harness import NEEDS_PROMETHEUS, QUESTIONS, ROOT, SCRAPE_DEADLINE_S, poll, query, scalar, scraped
from kava_client import Client

pytestmark = [pytest.mark.e2e, NEEDS_PROMETHEUS]

DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "kava.json"
WINDOW = "10m"  # longer than this test runs, so every rate() sees all of its requests
GRAFANA_RANGES = ("$__rate_interval", "$__interval", "$__range")
BY_MODE = re.compile(r"\bby \((?:le, )?mode\)")


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, the ones folded inside rows included."""
    out = []
    for panel in board["panels"]:
        out.append(panel)
        out += panel.get("panels", [])
    return out


def to_promql(expr: str, board: dict[str, Any], chosen: dict[str, str]) -> str:
    """`expr` as Grafana sends it: the variables in `chosen` at that value, the others at "All"."""
    for name in GRAFANA_RANGES:
        expr = expr.replace(name, WINDOW)
    for var in board.get("templating", {}).get("list", []):
        value = chosen.get(var["name"]) or var.get("allValue") or ".*"
        expr = expr.replace(f"${{{var['name']}}}", value).replace(f"${var['name']}", value)
    assert "$" not in expr, f"a variable the test does not know is left in {expr}"
    return expr


def finite(series: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for s in series if math.isfinite(float(s["value"][1]))]


def serve_latent_and_cot(url: str, prometheus: str) -> None:
    """A request of each mode, seen by a scrape, then more of each: every histogram then grows
    between two samples, so rate() and the quantiles are finite."""
    count = "sum(kava_time_to_first_token_seconds_count)"
    before = scalar(prometheus, count) or 0.0
    with Client(base_url=url, max_retries=0) as client:
        client.solve(QUESTIONS[0])
        client.solve(QUESTIONS[0], mode="cot", max_new_tokens=4)
        assert poll(lambda: scraped(prometheus, count, before + 2)), "the first two requests were not scraped"
        for question in QUESTIONS[1:3]:
            client.solve(question)
            client.solve(question, mode="cot", max_new_tokens=4)
    assert poll(lambda: scraped(prometheus, count, before + 6)), "the later requests were not scraped"


def test_every_panel_query_returns_a_series(kava_server, prometheus):
    assert poll(lambda: scraped(prometheus, 'up{job="kava"}', 1)), f"Prometheus never scraped {kava_server}/metrics"
    serve_latent_and_cot(kava_server, prometheus)

    board = dashboard()
    checks = [
        (panel["title"], to_promql(target["expr"], board, chosen))
        for chosen in ({}, {"adapter": "tiny"})  # All, then the adapter that served
        for panel in panels(board)
        for target in panel.get("targets", [])
    ]
    answers: dict[str, list[dict[str, Any]]] = {}

    def problem(promql: str) -> str | None:
        good = finite(answers[promql])
        if not good:
            return f"no series with a finite value (got {answers[promql]})"
        if BY_MODE.search(promql) and "kava_request_latent_time" not in promql:
            modes = {s["metric"].get("mode") for s in good}
            if not {"latent", "cot"} <= modes:
                return f"grouped by mode but only {sorted(modes)} answered"
        return None

    def all_answer() -> bool:
        answers.update({promql: query(prometheus, promql) for _, promql in checks})
        return all(problem(promql) is None for _, promql in checks)

    reached = poll(all_answer, SCRAPE_DEADLINE_S)
    print(f"\nDashboard queries against Prometheus ({len(checks)} targets):")
    for title, promql in checks:
        shown = {json.dumps(s["metric"], sort_keys=True): s["value"][1] for s in answers[promql]}
        print(f"  [{title}] {promql}\n    = {shown}")
    failures = [f"[{title}] {promql}: {problem(promql)}" for title, promql in checks if problem(promql)]
    assert reached and not failures, "\n".join(failures)


def test_the_adapter_variable_lists_the_served_adapters(kava_server, prometheus):
    (var,) = [v for v in dashboard()["templating"]["list"] if v["name"] == "adapter"]
    metric, label = re.fullmatch(r"label_values\((\w+), *(\w+)\)", var["query"]["query"]).groups()
    listed: set[str] = set()

    def both() -> bool:
        listed.update(s["metric"].get(label) for s in query(prometheus, metric))
        return {"tiny", "tiny-b"} <= listed

    assert poll(both), f"{var['query']['query']} lists {sorted(listed)}, not the served tiny and tiny-b"
