"""`kava bench` on the tiny model: the engine report (both modes, every batch size, ratios),
the serving report against a live server, JSONL questions, and the CLI's output files.
Benchmarks report numbers; nothing here asserts a timing."""

from __future__ import annotations

import argparse
import json

import pytest
from server_harness import QUESTIONS, app_over, live_server

from server import bench
from server.bench_engine import bench_engine, engine_table, load_questions
from server.bench_serving import Load, bench_serving, percentiles, serving_table


def test_engine_bench_measures_both_modes_at_each_batch_size(tiny_model):
    report = bench_engine(tiny_model, QUESTIONS, batch_sizes=(1, 3), max_new_tokens={"latent": 2, "cot": 5})
    cells = {(c["mode"], c["batch_size"]): c for c in report["cells"]}
    assert set(cells) == {(m, b) for m in ("latent", "cot") for b in (1, 3)}
    t = tiny_model.config.num_iterations
    # the random tiny model never stops early: every row decodes its full budget
    assert cells[("latent", 3)]["passes_per_request"] == 1 + t + (2 - 1)
    assert cells[("cot", 3)]["passes_per_request"] == 1 + (5 - 1)
    assert cells[("cot", 3)]["generated_tokens"] == 15
    (r1, r3) = report["ratios"]
    assert r3["passes_per_request"] == pytest.approx(cells[("latent", 3)]["passes_per_request"] / 5)
    table = engine_table(report)
    assert table.count("| latent |") == 2 and "latent/CoT" in table


def test_serving_bench_reports_latency_percentiles_and_a_baseline(runner):
    with live_server(app_over(runner, max_wait_ms=20)) as url:
        closed = bench_serving(url, QUESTIONS, Load(requests=6, concurrency=3, max_new_tokens=2))
        poisson = bench_serving(url, QUESTIONS, Load(requests=4, rate=50.0, max_new_tokens=2), baseline_url=url)
    for report in (closed, poisson):
        for side in ("batched", "baseline"):
            r = report[side]
            assert r["completed"] == report["load"]["requests"] and r["failed"] == 0
            assert set(r["ttft_s"]) == set(r["e2e_s"]) == {"p50", "p90", "p99"}
            assert r["ttft_s"]["p50"] <= r["e2e_s"]["p99"]
    assert closed["baseline_kind"].startswith("sequential")
    assert "| batched | 6 | 0 |" in serving_table(closed)


def test_percentiles_interpolate():
    assert percentiles([3.0, 1.0, 2.0]) == {"p50": 2.0, "p90": pytest.approx(2.8), "p99": pytest.approx(2.98)}
    assert percentiles([]) == {"p50": None, "p90": None, "p99": None}


def test_questions_from_jsonl(tmp_path):
    good = tmp_path / "q.jsonl"
    good.write_text('{"question": "1+1?"}\n\n{"question": "2+2?", "answer": "4"}\n')
    assert load_questions(good) == ["1+1?", "2+2?"]
    assert len(load_questions(None)) >= 8
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"q": 1}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        load_questions(bad)


def test_kava_bench_engine_writes_json_and_markdown(adapter_dir, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(
        ["engine", "--adapter", str(adapter_dir), "--batch-sizes", "1,2", "--max-new-tokens-cot", "3"]
        + ["--max-new-tokens-latent", "2", "--out", str(tmp_path)]
    )
    assert bench.run(args) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    assert len(report["engine"]["cells"]) == 4
    assert "## Engine" in (tmp_path / "bench.md").read_text()
    assert "| cot | 2 |" in capsys.readouterr().out
