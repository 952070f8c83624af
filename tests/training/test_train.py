"""`kava train`: every objective trains and writes a loadable adapter; resume is exact;
the trainable-parameter count is what the config implies; bad configs fail early."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from tiny import EXAMPLES

from kava.adapters import load_adapter
from kava.config import ConfigError
from kava_cli.main import main as kava_main
from training.config import build_config, load_config
from training.run import train


def toy_file(tmp_path: Path) -> Path:
    path = tmp_path / "toy.jsonl"
    path.write_text(
        "".join(
            json.dumps({"question": e.question, "steps": list(e.steps), "answer": e.answer}) + "\n" for e in EXAMPLES
        )
    )
    return path


def toy_config(tmp_path: Path, base: Path, **sections) -> dict:
    data = toy_file(tmp_path)
    raw = {
        "base_model": str(base),
        "output_dir": str(tmp_path / "run"),
        "device": "cpu",
        "method": {"num_latents": 3, "num_iterations": 2, "codi_weight": 1.0, "kv_weight": 1.0},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "optim": {"lr": 1e-2, "max_steps": 10, "batch_size": 4, "warmup_ratio": 0.0, "log_every": 1, "save_every": 5},
        "data": {"train": str(data), "eval": str(data), "num_eval": 4},
        "eval": {"batch_size": 4, "max_new_tokens": 4, "cot_max_new_tokens": 8},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values) if isinstance(values, dict) else raw.__setitem__(name, values)
    return raw


@pytest.mark.parametrize("objective", ["kava", "pccot", "codi", "cot", "nocot"])
def test_each_objective_trains_and_writes_a_loadable_adapter(tiny_bases, tmp_path, objective):
    cfg = build_config(toy_config(tmp_path, tiny_bases["llama"], method={"objective": objective}))
    last = train(cfg, progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    totals = [r["total"] for r in log if "total" in r]
    assert len(totals) == 10 and all(map(torch.isfinite, torch.tensor(totals)))
    assert totals[-1] < totals[0], totals
    assert "eval" in last
    model = load_adapter(tmp_path / "run" / "adapter")
    assert model.config.objective == objective


@pytest.mark.parametrize("group", [0, 2])
def test_resume_reproduces_the_uninterrupted_run(tiny_bases, tmp_path, group):
    raw = toy_config(
        tmp_path,
        tiny_bases["llama"],
        optim={"max_steps": 6, "save_every": 3},
        lora={"r": 4, "alpha": 8, "dropout": 0.1},
        data={"group_by_length": group},  # batches sorted by length: the order is still a function of the position
    )
    straight = build_config({**raw, "output_dir": str(tmp_path / "a")})
    train(straight, progress=False)
    split = build_config({**raw, "output_dir": str(tmp_path / "b")})
    train(split, stop_after=3, progress=False)
    assert not (tmp_path / "b" / "adapter").exists()
    train(replace(split, resume="auto"), progress=False)  # resuming is explicit
    a = load_adapter(tmp_path / "a" / "adapter").state_dict()
    b = load_adapter(tmp_path / "b" / "adapter").state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5, msg=k)


def test_trainable_parameter_count(tiny_bases, tmp_path):
    from kava.backbone import build_model

    cfg = build_config(toy_config(tmp_path, tiny_bases["llama"]))
    model = build_model(cfg.base_model, cfg.method, cfg.lora)
    d, inter, layers, r = 32, 64, 2, 4
    kv = 2 * (d // 4)  # 2 KV heads of head_dim 8
    shapes = [(d, d), (d, kv), (d, kv), (d, d), (d, inter), (d, inter), (inter, d)]  # q k v o gate up down
    lora = layers * sum(r * (i + o) for i, o in shapes)
    projection = 2 * (d * d + d) + 2 * d  # two Linear(D, D) + LayerNorm(D)
    special = 3 * d
    assert sum(p.numel() for p in model.trainable_parameters()) == lora + projection + special == 6368


def test_bad_configs_fail_before_any_model_loads(tmp_path):
    with pytest.raises(ConfigError) as err:
        build_config(
            {
                "method": {"num_latents": 0},
                "optimizer": {},
                "data": {"train": str(tmp_path / "nope.jsonl")},
                "base_model": "/does/not/matter",
            }
        )
    msg = str(err.value)
    assert "num_latents=0" in msg and "'optimizer'" in msg and "nope.jsonl" in msg and "file not found" in msg
    with pytest.raises(ConfigError, match="optim.lrate"):
        build_config({"optim": {"lrate": 1}})
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_overrides_and_cli_print(tmp_path, capsys):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("method:\n  num_latents: 6\noptim:\n  lr: 0.001\n")
    cfg = load_config(cfg_file, ["optim.lr=5e-4", "method.eviction=crop"])
    assert cfg.optim.lr == 5e-4 and cfg.method.eviction == "crop" and cfg.method.num_latents == 6
    assert kava_main(["train", str(cfg_file), "method.num_latents=9", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["method"]["num_latents"] == 9
    with pytest.raises(SystemExit, match="num_latents=-1"):
        kava_main(["train", str(cfg_file), "method.num_latents=-1"])


def test_recipes_parse():
    recipes = sorted((Path(__file__).resolve().parents[2] / "training" / "recipes").glob("*.yaml"))
    assert len(recipes) >= 5
    for r in recipes:
        load_config(r)


def test_gradient_shares_are_logged_and_sum_to_one(tiny_bases, tmp_path):
    cfg = build_config(
        toy_config(tmp_path, tiny_bases["llama"], optim={"max_steps": 4}, eval={"grad_share_every": 2, "final": False})
    )
    train(cfg, progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    measured = [r for r in log if "grad_share_kv" in r]
    assert [r["step"] for r in measured] == [2, 4]
    for r in measured:
        shares = [r[f"grad_share_{k}"] for k in ("student_ce", "teacher_ce", "codi", "kv")]
        assert abs(sum(shares) - 1) < 1e-6 and all(0 < s < 1 for s in shares), shares


# Curriculum ------------------------------------------------------------------------------
def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_curriculum_config_is_validated_and_recorded(tmp_path):
    with pytest.raises(ConfigError) as err:
        build_config({"curriculum": {"stages": 2, "steps_per_stage": 0}})
    assert "curriculum.steps_per_stage=0" in str(err.value)
    with pytest.raises(ConfigError, match="curriculum.stages=2: objective 'cot'"):
        build_config({"method": {"objective": "cot"}, "curriculum": {"stages": 2, "steps_per_stage": 5}})
    with pytest.raises(ConfigError, match="curriculum.bogus"):
        build_config({"curriculum": {"bogus": 1}})
    assert not build_config({}).curriculum.enabled  # off by default
    gate = ["curriculum.stages=3", "curriculum.steps_per_stage=400", "curriculum.advance_at=5e-1"]
    with pytest.raises(ConfigError, match="curriculum.max_steps_per_stage=0: with advance_at set"):
        load_config(None, gate)
    cfg = load_config(None, [*gate, "curriculum.max_steps_per_stage=2000"])
    assert cfg.curriculum.gated and cfg.curriculum.advance_at == 0.5
    assert cfg.to_dict()["curriculum"] == {
        "stages": 3,
        "steps_per_stage": 400,
        "advance_at": 0.5,
        "gate_every": 0,
        "max_steps_per_stage": 2000,
    }


def test_curriculum_run_logs_stages_and_resumes_exactly_across_a_boundary(tiny_bases, tmp_path):
    raw = toy_config(
        tmp_path,
        tiny_bases["llama"],
        method={"drop_last_step": False},
        optim={"max_steps": 6, "save_every": 3},
        curriculum={"stages": 2, "steps_per_stage": 2},
        eval={"final": False},
    )
    straight = build_config({**raw, "output_dir": str(tmp_path / "a")})
    train(straight, progress=False)
    log = _log(tmp_path / "a")
    assert [r["stage"] for r in log if "total" in r] == [1, 1, 2, 2, 3, 3]
    assert [(r["step"], r["curriculum"]["next_stage"]) for r in log if "curriculum" in r] == [(2, 2), (4, 3)]
    recorded = json.loads((tmp_path / "a" / "train_config.json").read_text())
    assert recorded["curriculum"]["stages"] == 2 and recorded["curriculum"]["steps_per_stage"] == 2
    split = build_config({**raw, "output_dir": str(tmp_path / "b")})
    train(split, stop_after=3, progress=False)  # stage 2 began at step 2
    train(replace(split, resume="auto"), progress=False)  # resuming is explicit
    a = load_adapter(tmp_path / "a" / "adapter").state_dict()
    b = load_adapter(tmp_path / "b" / "adapter").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5, msg=k)
    # the same run without a curriculum trains different weights
    plain = build_config({**raw, "output_dir": str(tmp_path / "c"), "curriculum": {}})
    train(plain, progress=False)
    c = load_adapter(tmp_path / "c" / "adapter").state_dict()
    assert any(not torch.allclose(a[k], c[k]) for k in a)


def test_gated_curriculum_records_its_boundaries_and_resumes_exactly(tiny_bases, tmp_path):
    # a random tiny model never reaches 100%: every stage runs to its cap, measured each step
    raw = toy_config(
        tmp_path,
        tiny_bases["llama"],
        method={"drop_last_step": False},
        optim={"max_steps": 6, "save_every": 3},
        curriculum={"stages": 2, "steps_per_stage": 1, "advance_at": 1.0, "gate_every": 1, "max_steps_per_stage": 2},
        eval={"final": False, "cot_max_new_tokens": 4},
    )
    straight = build_config({**raw, "output_dir": str(tmp_path / "a")})
    train(straight, progress=False)
    log = _log(tmp_path / "a")
    assert [r["stage"] for r in log if "total" in r] == [1, 1, 2, 2, 3, 3]
    gates = [(r["step"], r["curriculum"]["advanced"]) for r in log if "curriculum" in r]
    assert gates == [(1, False), (2, True), (3, False), (4, True)]
    state = json.loads((tmp_path / "a" / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["extra"]["schedule"]["stage_starts"] == [2, 4]
    split = build_config({**raw, "output_dir": str(tmp_path / "b")})
    train(split, stop_after=3, progress=False)
    train(replace(split, resume="auto"), progress=False)  # resuming is explicit
    a = load_adapter(tmp_path / "a" / "adapter").state_dict()
    b = load_adapter(tmp_path / "b" / "adapter").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5, msg=k)


def test_adapters_travel_with_their_base_id_and_a_filled_model_card(tiny_bases, tmp_path):
    cfg = build_config(toy_config(tmp_path, tiny_bases["llama"]))
    train(cfg, progress=False)
    adapter = tmp_path / "run" / "adapter"
    peft_cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert peft_cfg["base_model_name_or_path"] == str(tiny_bases["llama"])  # the id it was given, as given
    card = (adapter / "README.md").read_text()
    assert card.startswith("---\nbase_model: ")
    for needle in ("latents M / iterations T | 3 / 2", "| latent |", "training data", "## Made with"):
        assert needle in card, needle
    assert "starts from" not in card


def test_a_fine_tune_starts_from_the_adapter_and_says_so(tiny_bases, tmp_path):
    first = build_config(toy_config(tmp_path, tiny_bases["llama"]))
    train(first, progress=False)
    raw = toy_config(tmp_path, tiny_bases["llama"]) | {"output_dir": str(tmp_path / "ft")}
    raw["init_adapter"] = str(tmp_path / "run" / "adapter")
    train(build_config(raw), progress=False)

    def totals(run: str) -> list[float]:
        log = [json.loads(line) for line in (tmp_path / run / "log.jsonl").read_text().splitlines()]
        return [r["total"] for r in log if "total" in r]

    fresh, tuned = totals("run"), totals("ft")
    assert tuned[0] < 0.5 * (fresh[0] + fresh[-1]), (fresh, tuned)  # it starts where the first run ended
    card = (tmp_path / "ft" / "adapter" / "README.md").read_text()
    assert f"starts from | the adapter `{tmp_path / 'run' / 'adapter'}`" in card
