"""`python -m training.builtin` end to end, in miniature: every stage runs a few steps.

The real build takes hours; this runs the same functions (tokenizer, from-scratch backbone,
KaVa adapter through `kava train`'s path, regression record) on a tiny shape so the builder
cannot rot unnoticed. Nothing is written into `kava/builtin/`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kava.adapters import load_adapter
from kava.generate import solve_batch
from training.builtin import build_base, finalize, main
from training.builtin_adapter import build_adapter
from training.pretrain import BackboneShape
from training.trainer import OptimSettings

TINY = BackboneShape(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
STEPS = OptimSettings(lr=1e-3, max_steps=2, batch_size=4, save_every=1, log_every=1)
ADAPTER = (
    "optim.max_steps=2",
    "optim.batch_size=4",
    "optim.eval_every=0",
    "data.num_train=16",
    "data.num_eval=4",
    "eval.batch_size=4",
    "method.num_latents=3",
    "method.num_iterations=1",
    "lora.r=2",
)


def test_every_stage_of_the_builtin_build_runs(tmp_path: Path) -> None:
    work, root = tmp_path / "work", tmp_path / "builtin"
    assert build_base(work, dest=root / "base", shape=TINY, settings=STEPS, num_train=32)
    assert (root / "base" / "model.safetensors").is_file()
    tok = json.loads((root / "base" / "tokenizer.json").read_text())
    assert all(str(i) in tok["model"]["vocab"] for i in range(10)), "every digit is its own token"

    assert build_adapter(work, str(root / "base"), root / "adapter", overrides=ADAPTER)
    trained = json.loads((root / "adapter" / "kava_config.json").read_text())["extra"]["train_config"]
    assert trained["init_adapter"] == str(work / "cpu-wide" / "adapter")  # the last stage, from the run before it
    assert trained["data"]["rephrase"] > 0 and trained["data"]["min_steps"] == 1
    stages = ("adapter", "phrasing", "more", "tail", "wide", "cpu-wide", "cpu-tail")
    chain = [json.loads((work / n / "train_config.json").read_text()).get("init_adapter") for n in stages[1:]]
    assert chain == [str(work / n / "adapter") for n in stages[:-1]]
    model = load_adapter(root / "adapter", device="cpu", dtype="float32")
    out = solve_batch(model, ["Tom has 3 apples and buys 4 more. How many apples does he have?"], max_new_tokens=4)
    assert out.results[0].forward_passes >= 2

    finalize(n_probe=4, n_keep=2, root=root)
    sums = (root / "SHA256SUMS").read_text()
    assert "adapter/adapter_model.safetensors" in sums and "base/model.safetensors" in sums
    record = json.loads((root / "regression.json").read_text())
    assert record["mode"] == "latent" and 0.0 <= record["probe_accuracy"] <= 1.0


def test_a_stopped_stage_resumes(tmp_path: Path) -> None:
    work, dest = tmp_path / "work", tmp_path / "base"
    four = OptimSettings(lr=1e-3, max_steps=4, batch_size=4, save_every=1, log_every=1)
    assert not build_base(work, 2, dest=dest, shape=TINY, settings=four, num_train=32)
    assert not dest.exists()
    assert build_base(work, dest=dest, shape=TINY, settings=four, num_train=32)
    log = [json.loads(line) for line in (work / "base.work" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "step" in r][-1] == 4


def test_backbone_variants_never_overwrite_the_shipped_base(capsys) -> None:
    for argv in (["--internalize", "0.5"], ["--stage", "base", "--layers", "6"], ["--stage", "all", "--dest", "x"]):
        with pytest.raises(SystemExit):
            main(argv)
        assert "--dest" in capsys.readouterr().err
