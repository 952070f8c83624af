"""`optim.max_minutes`: a run bound by time ends when its budget is spent, with the same
checkpoint, final evaluation and adapter as a run that reached `max_steps`, and its cosine
schedule decays on the time spent, so it ends at lr 0 whichever bound comes first."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_train import toy_config

from kava.adapters import load_adapter
from training.checkpoint import latest_checkpoint, read_state
from training.config import build_config
from training.trainer import OptimSettings, cosine_with_warmup


def _lrs(clock=None, total: int = 10, warmup_ratio: float = 0.2) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = cosine_with_warmup(opt, total, warmup_ratio, clock)
    out = []
    for _ in range(total):
        out.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return out


def test_the_schedule_runs_on_whichever_is_further_along_steps_or_time():
    by_steps = _lrs()
    assert by_steps[0] == pytest.approx(0.5) and by_steps[2] == pytest.approx(1.0)  # 2 warm-up steps
    assert _lrs(clock=lambda: 0.0) == pytest.approx(by_steps)  # no time spent: the step schedule
    half = _lrs(clock=lambda: 0.5)  # half the time gone at step 0: mid-decay, then the steps catch up
    assert half[0] == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 8)))
    assert half[-1] == pytest.approx(by_steps[-1])
    assert _lrs(clock=lambda: 1.5) == pytest.approx([0.0] * 10)  # over budget: lr 0, not negative


def test_a_run_out_of_time_stops_with_its_checkpoint_eval_and_adapter(tiny_bases, tmp_path):
    from training.run import train

    optim = {"max_steps": 1000, "max_minutes": 1e-6, "save_every": 100}
    last = train(build_config(toy_config(tmp_path, tiny_bases["llama"], optim=optim)), progress=False)
    run = tmp_path / "run"
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "total" in r] == [1]  # one step, not a thousand
    assert {"step": 1, "stopped": "max_minutes=1e-06 spent"} in log
    assert read_state(latest_checkpoint(run))["step"] == 1
    assert "eval" in last and load_adapter(run / "adapter").config.objective == "kava"
    card = (run / "adapter" / "README.md").read_text()
    assert "| budget | 1 steps × batch 4, lr 0.01 (time budget 1e-06 min) |" in card


def test_the_time_spent_is_checkpointed_and_carried_over_a_resume(tiny_bases, tmp_path):
    from training.run import train

    optim = {"max_steps": 6, "max_minutes": 60.0, "save_every": 1}
    raw = toy_config(tmp_path, tiny_bases["llama"], optim=optim, eval={"final": False})
    train(build_config(raw), stop_after=3, progress=False)
    ckpt = latest_checkpoint(tmp_path / "run")
    state = read_state(ckpt)
    assert state["extra"]["elapsed_s"] > 0
    state["extra"]["elapsed_s"] = 3600.0  # as if the first run had spent the whole hour
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
    train(build_config({**raw, "resume": "auto"}), progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert {"step": 4, "stopped": "max_minutes=60.0 spent"} in log  # one step after the resume, not six
    assert (tmp_path / "run" / "adapter" / "kava_config.json").is_file()


def test_a_bare_no_for_mixed_precision_means_no_not_a_type_error():
    assert build_config({"optim": {"mixed_precision": False}}).optim.mixed_precision == "no"


def test_a_negative_budget_is_refused_by_name():
    with pytest.raises(ValueError, match=r"max_minutes=-1: must be a number >= 0"):
        OptimSettings(max_minutes=-1)
