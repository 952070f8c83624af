"""Trackers: JSONL by default, TensorBoard event files when asked, W&B refused up front when
it cannot start (not installed, or no credentials) — never a prompt in the middle of a run."""

from __future__ import annotations

import importlib.util

import pytest
from test_train import toy_config

import training.trackers as trackers
from kava.config import ConfigError
from training.config import build_config
from training.run import train


def test_records_flatten_to_named_scalars():
    record = {"total": 2.5, "stage": 1, "eval": {"latent": {"accuracy": 0.5, "n": 4}}, "note": "x", "ok": True}
    assert trackers.scalars(record) == {
        "total": 2.5,
        "stage": 1.0,
        "eval/latent/accuracy": 0.5,
        "eval/latent/n": 4.0,
        "ok": 1.0,
    }


def test_report_to_is_validated_before_any_model_loads(monkeypatch, tmp_path):
    assert build_config({}).report_to == ("jsonl",)
    with pytest.raises(ConfigError, match="unknown 'mlflow'"):
        build_config({"report_to": ["jsonl", "mlflow"]})
    real = importlib.util.find_spec
    monkeypatch.setattr(trackers, "find_spec", lambda name: None if name == "wandb" else real(name))
    with pytest.raises(ConfigError, match=r"'wandb' but it is not installed: pip install"):
        build_config({"report_to": "wandb"})
    monkeypatch.setattr(trackers, "find_spec", lambda name: object() if name == "wandb" else real(name))
    for var in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    with pytest.raises(ConfigError, match="W&B has no credentials: set WANDB_API_KEY"):
        build_config({"report_to": ["wandb"]})
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert build_config({"report_to": ["wandb"]}).report_to == ("wandb",)


def test_tensorboard_receives_the_logged_scalars(tiny_bases, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    raw = toy_config(tmp_path, tiny_bases["llama"], optim={"max_steps": 3}, report_to=["jsonl", "tensorboard"])
    train(build_config(raw), progress=False)
    assert (tmp_path / "run" / "log.jsonl").read_text().count('"total"') == 3
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    assert [e.step for e in events.Scalars("total")] == [1, 2, 3]
    assert "eval/latent/accuracy" in events.Tags()["scalars"]
