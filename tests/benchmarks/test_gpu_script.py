"""The prepared GPU run's code path, on CPU with tiny shapes (`--smoke`): the random
Llama-shaped model is built, benchmarked with fixed answer lengths, and set against the
bandwidth bound, its passes timed one by one; the report files appear. Its numbers mean nothing here."""

from __future__ import annotations

import json

from benchmarks import gpu


def test_the_gpu_script_runs_on_cpu_with_tiny_shapes(tmp_path, capsys):
    argv = ["--device", "cpu", "--dtype", "float32", "--smoke", "--sections", "llama", "--out", str(tmp_path)]
    assert gpu.main(argv) == 0
    report = json.loads((tmp_path / "gpu.json").read_text())
    sec = report["llama_1b_shape"]
    assert "error" not in sec, sec.get("traceback")
    cells = {(c["path"], c["batch_size"]) for c in sec["engine"]["cells"]}
    paths = ("hf-generate", "kava-cot", "kava-latent", "kava-cot+graphs", "kava-latent+graphs")
    assert cells == {(p, b) for p in paths for b in (1, 2)}
    latent = [c for c in sec["engine"]["cells"] if c["path"].startswith("kava-latent")]
    assert all(c["generated_tokens_per_question"] == 16 for c in latent), "fixed answer lengths"
    assert sorted((r["path"], r["batch_size"]) for r in sec["bound"]) == [
        (p, b) for p in ("kava-latent", "kava-latent+graphs") for b in (1, 2)
    ]
    assert all(r["bound_ms"] > 0 for r in sec["bound"])
    assert "bandwidth bound" in (tmp_path / "gpu.md").read_text()
    assert {r["batch"] for r in sec["passes"]["rows"]} == {1, 2}
    assert "One forward pass" in (tmp_path / "gpu.md").read_text()


def test_the_pass_split_adds_up_and_sees_the_forward(bench_model):
    import torch

    questions = ["Tom has 3 apples and buys 4 more. How many apples does he have?"] * 2
    for graphs in (False, True):
        r = gpu.pass_split(bench_model, questions, torch.device("cpu"), "latent", graphs)
        assert r["passes"] > 2 and r["outside_ms_per_pass"] > 0
        # the forward is most of a pass on CPU; timing only the prefills (one pass in ~19) would read ~5%
        assert r["forward_ms_per_pass"] > 0.3 * r["ms_per_pass"]
        assert abs(r["forward_ms_per_pass"] + r["outside_ms_per_pass"] - r["ms_per_pass"]) < 1e-6
