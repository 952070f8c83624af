"""Data parallelism with two real processes on CPU (torchrun, gloo): a 2-process run trains
the same weights as a 1-process run with the same global batch, and resumes exactly.

Every optimizer step is `grad_accum` micro-batches dealt round-robin to the processes, so
here 1 process runs 4 micro-batches per step and each of 2 processes runs 2 (the first
under `no_sync`); the gradients differ only in summation order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train import toy_config

from kava.adapters import load_adapter
from training.config import build_config
from training.run import train
from training.trainer import split_step

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("ddp_worker.py")


def _config(tmp_path: Path, base: Path, run: str) -> dict:
    return toy_config(
        tmp_path,
        base,
        output_dir=str(tmp_path / run),
        lora={"r": 4, "alpha": 8, "dropout": 0.0},  # dropout masks would differ between 1 and 2 processes
        optim={"max_steps": 4, "batch_size": 8, "grad_accum": 4, "save_every": 2, "keep_last": 1},
        eval={"final": False, "grad_share_every": 2},  # autograd.grad inside the DDP forward, too
    )


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_adapter(run / "adapter").state_dict()


def _totals(run: Path) -> list[float]:
    return [r["total"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "total" in r]


def test_two_processes_train_what_one_does_and_resume_exactly(tiny_bases, tmp_path):
    base = tiny_bases["llama"]
    train(build_config(_config(tmp_path, base, "one")), progress=False)
    configs = []
    for run in ("two", "two-split"):
        path = tmp_path / f"{run}.json"
        path.write_text(json.dumps(_config(tmp_path, base, run)))
        configs.append(str(path))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER)]
    proc = subprocess.run([*cmd, *configs, "2"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]

    one, two, split = (_weights(tmp_path / r) for r in ("one", "two", "two-split"))
    assert one.keys() == two.keys() == split.keys()
    gap = max(float((two[k] - one[k]).abs().max()) for k in one)
    assert gap < 1e-5, f"2 processes vs 1: max |w2 - w1| = {gap:.2e}"  # summation order only (measured ~2e-7)
    for k in one:
        assert torch.equal(split[k], two[k]), k  # the resumed run replays the same steps bit for bit
    # the logged loss is the whole step's (averaged over processes), the same one process logs
    torch.testing.assert_close(torch.tensor(_totals(tmp_path / "two")), torch.tensor(_totals(tmp_path / "one")))
    assert _totals(tmp_path / "two-split") == _totals(tmp_path / "two")
    assert [p.name for p in (tmp_path / "two-split").glob("checkpoint-*")] == ["checkpoint-4"]  # keep_last=1


def test_a_step_is_cut_into_the_same_micro_batches_on_any_number_of_processes():
    assert split_step(128, 8, 1) == (8, 16)
    assert split_step(128, 8, 8) == (8, 16)  # one micro-batch of 16 per process: the 1-process step
    assert split_step(128, 16, 8) == (16, 8)  # two each, the first under no_sync
    assert split_step(128, 4, 8) == (8, 16)  # lcm: the same examples, smaller passes
    with pytest.raises(ValueError, match=r"batch_size=10 cannot be cut into 6 micro-batches .* grad_accum=2 and 3"):
        split_step(10, 2, 3)
