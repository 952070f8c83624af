"""`kava bench` on the tiny model: the engine report (HF anchor, kava CoT, kava latent at every
batch size, ratios), the anchor answering what kava CoT answers, the serving report with a
mixed load against a live server, question sources, the per-pass timings, and the CLI's output files.
Benchmarks report numbers; nothing here asserts a timing."""

from __future__ import annotations

import argparse
import json

import pytest
from server_harness import QUESTIONS, app_over, live_server

from benchmarks import cli
from benchmarks.engine import PATHS, HFAnchor, bench_engine, engine_table
from benchmarks.passes import bench_passes, pass_shapes, passes_table
from benchmarks.questions import Question, load_questions
from benchmarks.serving import Load, bench_serving, percentiles, serving_table
from kava.adapters import load_adapter
from kava.generate import solve_batch


def test_the_anchor_writes_what_kava_cot_writes(bench_model, bench_adapter):
    """HF generate on the merged adapter = kava CoT on the same questions (greedy, same tokens)."""
    anchor = HFAnchor.merge(load_adapter(bench_adapter))
    answers, counts, steps = anchor.answer(QUESTIONS[:4], 7)
    ours = solve_batch(bench_model, QUESTIONS[:4], mode="cot", max_new_tokens=7).results
    assert answers == [r.answer for r in ours]
    assert counts == [r.generated_tokens for r in ours] and steps == max(counts)


def test_engine_bench_measures_every_path_at_each_batch_size(bench_model, bench_adapter):
    questions = [Question(q, str(i)) for i, q in enumerate(QUESTIONS[:3])]
    anchor = HFAnchor.merge(load_adapter(bench_adapter))
    report = bench_engine(
        bench_model, questions, batch_sizes=(1, 3), max_new_tokens={"latent": 2, "cot": 5}, anchor=anchor
    )
    cells = {(c["path"], c["batch_size"]): c for c in report["cells"]}
    assert set(cells) == {(p, b) for p in PATHS for b in (1, 3)}
    t = bench_model.config.num_iterations
    lat, cot = cells[("kava-latent", 3)], cells[("kava-cot", 3)]
    assert lat["passes_per_question"] <= 1 + t + (2 - 1) and cot["passes_per_question"] <= 1 + (5 - 1)
    assert cells[("hf-generate", 3)]["generated_tokens_per_question"] == cot["generated_tokens_per_question"]
    assert 0.0 <= lat["accuracy"] <= 1.0 and cells[("hf-generate", 1)]["kv_bytes_per_question"] is None
    r1, r3 = report["ratios"]
    assert r3["latent_vs_cot_passes"] == pytest.approx(cot["passes_per_question"] / lat["passes_per_question"])
    table = engine_table(report)
    assert table.count("| kava-latent |") == 2 and "latent speed / kava CoT" in table


def test_serving_bench_reports_a_mixed_load_per_mode(bench_runner):
    with live_server(app_over(bench_runner, max_wait_ms=5)) as url:
        mixed = Load(requests=8, rate=80.0, cot_share=0.5, max_new_tokens={"latent": 2, "cot": 3}, seed=1)
        report = bench_serving(url, QUESTIONS, mixed, baseline_url=url)
        closed = bench_serving(url, QUESTIONS, Load(requests=4, concurrency=2, max_new_tokens={"latent": 2}))
    modes = report["batched"]["by_mode"]
    assert set(modes) == {"latent", "cot"} and sum(m["completed"] for m in modes.values()) == 8
    assert report["latent_alone"]["completed"] == modes["latent"]["completed"]
    assert report["latent_p99_ttft_mixed_vs_alone"] is not None
    for side in ("batched", "baseline"):
        assert report[side]["failed"] == 0 and set(report[side]["e2e_s"]) == {"p50", "p90", "p99"}
    assert closed["baseline_kind"].startswith("sequential") and closed["batched"]["completed"] == 4
    table = serving_table(report)
    assert "| batched | cot |" in table and "| latent_alone | all |" in table


def test_percentiles_interpolate():
    assert percentiles([3.0, 1.0, 2.0]) == {"p50": 2.0, "p90": pytest.approx(2.8), "p99": pytest.approx(2.98)}
    assert percentiles([]) == {"p50": None, "p90": None, "p99": None}


def test_question_sources(tmp_path):
    held = load_questions(None, 5)
    assert len(held) == 5 and all(q.answer is not None for q in held)
    assert load_questions("held-out", 5) == held
    assert all(q.answer is None for q in load_questions("gsm8k"))
    assert len(load_questions("gsm8k", 40)) == 40  # cycled
    good = tmp_path / "q.jsonl"
    good.write_text('{"question": "1+1?"}\n\n{"question": "2+2?", "answer": 4}\n')
    assert load_questions(good) == [Question("1+1?"), Question("2+2?", "4")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"q": 1}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        load_questions(bad)


def test_kava_bench_engine_writes_json_and_markdown(bench_adapter, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(
        ["engine", "--adapter", str(bench_adapter), "--batch-sizes", "1,2", "-n", "2", "--max-new-tokens-cot", "3"]
        + ["--max-new-tokens-latent", "2", "--out", str(tmp_path)]
    )
    assert cli.run(args) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    assert len(report["engine"]["cells"]) == 6 and report["engine"]["questions"] == 2
    assert "## Engine" in (tmp_path / "bench.md").read_text()
    assert "| kava-cot | 2 |" in capsys.readouterr().out


def test_pass_bench_times_every_shape_at_each_batch_size(bench_model):
    report = bench_passes(bench_model, batch_sizes=(1, 3), num_latents=4, prompt=5, reps=2)
    rows = {(r["pass"], r["batch"]): r for r in report["rows"]}
    assert set(rows) == {(name, b) for name in pass_shapes(4, 5) for b in (1, 3)}
    assert rows[("Jacobi pass (4 slots)", 3)]["tokens"] == 12 and rows[("prefill (5 + 4 init slots)", 1)]["tokens"] == 9
    assert all(r["eager_ms"] > 0 and "compiled_ms" not in r for r in rows.values())
    assert passes_table(report).count("\n") == 2 + 6


def test_kava_bench_passes_prints_the_report_and_table(bench_adapter, capsys):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert cli.run(parser.parse_args(["passes", "--adapter", str(bench_adapter), "--batch-sizes", "2"])) == 0
    out = capsys.readouterr().out
    assert json.loads(out.split("\n\n## ")[0])["passes"]["rows"][0]["batch"] == 2
    assert "| decode (1 token) | 2 | 2 |" in out


@pytest.mark.slow  # inductor compiles C++ for each pass shape (~25 s here)
def test_pass_bench_times_the_compiled_pass_too(bench_model):
    report = bench_passes(bench_model, batch_sizes=(2,), num_latents=3, prompt=4, reps=1, compile=True)
    assert all(r["compiled_ms"] > 0 for r in report["rows"]) and report["compile_seconds"] > 0
    assert "compiled ms" in passes_table(report)


def test_train_step_bench_times_the_three_ways(capsys):
    from benchmarks.train_step import main as train_step_main

    assert train_step_main(["--batch-size", "4", "--steps", "1", "--group", "2"]) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [r[0].strip() for r in rows[1:]] == ["separate prefill", "shared question", "shared + group 2"]
    for r in rows[1:]:
        assert float(r[1]) > 0 and float(r[2]) > 0 and 0 < float(r[3].strip(" %")) <= 100
