"""Resuming is explicit and refuses changed settings: an output_dir with a checkpoint is not
silently continued (or overwritten), every differing field is named, `--override-resume`
accepts only the safe ones, the recorded config is the one in force, and checkpoints are
`checkpoint-<step>/` with `keep_last` retention."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from test_train import toy_config

from kava_cli.main import main as kava_main
from training.checkpoint import latest_checkpoint, list_checkpoints, prune_checkpoints, read_state
from training.config import build_config
from training.resume import ResumeError, config_changes
from training.run import train


def _raw(tmp_path: Path, base: Path, **optim) -> dict:
    optim = {"max_steps": 4, "save_every": 1, "log_every": 1, **optim}
    return toy_config(tmp_path, base, optim=optim, eval={"final": False})


def _stopped_run(tmp_path: Path, base: Path, steps: int = 2, **optim) -> dict:
    raw = _raw(tmp_path, base, **optim)
    train(build_config(raw), stop_after=steps, progress=False)
    return raw


def _recorded(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "run" / "train_config.json").read_text())


def test_an_output_dir_with_a_checkpoint_is_refused_unless_resume_is_asked(tiny_bases, tmp_path):
    raw = _stopped_run(tmp_path, tiny_bases["llama"])
    with pytest.raises(ResumeError, match=r"checkpoint-2, step 2\).*--resume.*resume: auto"):
        train(build_config(raw), progress=False)
    cfg_file = tmp_path / "run.json"
    cfg_file.write_text(json.dumps(raw))
    with pytest.raises(SystemExit, match="kava train: .* already holds a checkpoint"):
        kava_main(["train", str(cfg_file)])
    assert kava_main(["train", str(cfg_file), "--resume"]) == 0  # the CLI's explicit resume
    assert read_state(latest_checkpoint(tmp_path / "run"))["step"] == 4
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "total" in r] == [1, 2, 3, 4]  # the interrupted tail is not doubled
    assert {"step": 2, "resumed_from": "checkpoint-2"} in log


def test_changed_settings_are_named_and_unsafe_ones_refused_even_with_override(tiny_bases, tmp_path):
    raw = _stopped_run(tmp_path, tiny_bases["llama"])
    changed = json.loads(json.dumps(raw))
    changed["optim"] |= {"lr": 0.5, "max_steps": 8}
    changed["method"]["num_latents"] = 4
    changed["resume"] = "auto"
    for override in (False, True):
        with pytest.raises(ResumeError) as err:
            train(build_config(changed), progress=False, override_resume=override)
        msg = str(err.value)
        assert "3 setting(s) differ" in msg
        assert "optim.lr: saved 0.01, now 0.5  [cannot change on resume]" in msg
        assert "method.num_latents: saved 3, now 4  [cannot change on resume]" in msg
        assert "optim.max_steps: saved 4, now 8\n" in msg  # safe, but refused alongside the unsafe ones
    assert _recorded(tmp_path)["optim"]["lr"] == 0.01  # the refused config was not recorded


def test_override_resume_accepts_safe_changes_logs_them_and_records_the_config_in_force(tiny_bases, tmp_path):
    raw = _stopped_run(tmp_path, tiny_bases["llama"])
    longer = build_config({**raw, "resume": "auto", "optim": {**raw["optim"], "max_steps": 6, "log_every": 2}})
    with pytest.raises(ResumeError, match=r"pass --override-resume") as err:
        train(longer, progress=False)
    assert "optim.max_steps: saved 4, now 6" in str(err.value) and "optim.log_every: saved 1, now 2" in str(err.value)
    train(longer, progress=False, override_resume=True)
    assert _recorded(tmp_path)["optim"]["max_steps"] == 6
    assert read_state(latest_checkpoint(tmp_path / "run"))["extra"]["config"]["optim"]["max_steps"] == 6
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    note = next(r for r in log if "resumed_from" in r)
    assert note["accepted_changes"] == {
        "optim.log_every": {"saved": 1, "now": 2},
        "optim.max_steps": {"saved": 4, "now": 6},
    }
    assert [r["step"] for r in log if "total" in r] == [1, 2, 4, 6]
    train(replace(longer, resume="auto"), progress=False)  # and the next resume compares with the new record


def test_checkpoints_are_per_step_and_only_the_newest_are_kept(tiny_bases, tmp_path):
    _stopped_run(tmp_path, tiny_bases["llama"], steps=3, keep_last=2)
    run = tmp_path / "run"
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-2", "checkpoint-3"]
    (run / "checkpoint-9.tmp").mkdir()  # a save that crashed before its rename is not a checkpoint
    (run / "checkpoint-7").mkdir()  # nor is a folder without its state file
    assert latest_checkpoint(run).name == "checkpoint-3"
    assert [p.name for p in prune_checkpoints(run, 1)] == ["checkpoint-2"]
    assert prune_checkpoints(run, 0) == []  # 0 keeps every one


def test_config_changes_flatten_sections_and_classify_fields():
    saved = {"optim": {"lr": 1e-3, "max_steps": 10}, "eval": {"modes": ["latent"]}, "resume": "never"}
    new = {"optim": {"lr": 1e-3, "max_steps": 20}, "eval": {"modes": ("latent", "cot")}, "resume": "auto", "x": 1}
    changes, one_sided = config_changes(saved, new)
    assert [(c.field, c.safe) for c in changes] == [("eval.modes", True), ("optim.max_steps", True)]
    assert one_sided == ["x"]  # a field one version of the config does not have: named, not refused
    assert not config_changes({"optim": {"lr": 1e-3}}, {"optim": {"lr": 2e-3}})[0][0].safe
