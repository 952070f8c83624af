"""Stage 2 of the built-in model: its KaVa adapter, trained with `kava train`'s code path
from `training/recipes/tiny-cpu.yaml` in a chain of runs (`RUNS`), each but the first starting
from the adapter the one before wrote (`init_adapter`), and copied into `kava/builtin/adapter`:
the built-in budget (`BUDGET`), a fine-tune on questions asked the way people ask (`PHRASING`),
more steps on that mix (`MORE`), a low-lr tail that gives back the CoT teacher (`TAIL`),
461 steps of 8x the batch (`WIDE`), first run on a GPU, 667 more wide steps with the CODI weight
lowered (`CPU_WIDE`) and a short tail (`CPU_TAIL`)."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from training.config import load_config
from training.run import train

log = logging.getLogger(__name__)

RECIPE = Path(__file__).resolve().parent / "recipes" / "tiny-cpu.yaml"
# 3x the tiny recipe's steps on 4x its problems: held-out latent accuracy kept rising past the
# recipe's 800 steps (README, "The built-in model"); ~1.5 h on one core of the 2-core CPU
BUDGET = ("optim.max_steps=2400", "data.num_train=80000", "optim.eval_every=400")
# then reworded questions, one-step problems and small numbers (README: "Questions asked the way
# people ask"); ~40 min on one core
PHRASING = (
    "data.min_steps=1",
    "data.rephrase=0.5",
    "data.small_numbers=0.3",
    "data.seed=2",
    "data.num_train=40000",
    "optim.max_steps=1000",
    "optim.lr=3e-4",
    "optim.eval_every=250",
)
# then 2400 more steps on that mix at lr 5e-4: latent 15.2 -> 20.4% on the 500 held-out, CoT
# 85.2 -> 79.8% (README, "The built-in model"); ~90 min on one core
MORE = (
    "data.min_steps=1",
    "data.rephrase=0.5",
    "data.small_numbers=0.3",
    "data.seed=7",
    "data.num_train=80000",
    "optim.max_steps=2400",
    "optim.lr=5e-4",
    "optim.eval_every=400",
)
# and a low-lr tail with fewer reworded and small-number problems and the teacher's CE weighted
# 5x, which gives back the CoT teacher; ~22 min on one core
TAIL = (
    "method.teacher_ce_weight=5",
    "data.min_steps=1",
    "data.rephrase=0.3",
    "data.small_numbers=0.15",
    "data.seed=11",
    "data.num_train=20000",
    "optim.max_steps=600",
    "optim.lr=2e-4",
    "optim.eval_every=200",
)
# then 461 steps of 256 problems, 8x the batch, on the reworded mix with the teacher's CE x5: latent
# 20.2 -> 23.4%, CoT 88.6 -> 92.4% on the 500 held-out (README, "The built-in model"). Trained on an
# H200 in 4.25 minutes (`training/gpu_session.sh`: optim.max_minutes=4.25, four runs sharing the GPU,
# where the schedule decayed on time; 461 steps is where it stopped); ~2.5 h on one CPU core
WIDE = (
    "method.teacher_ce_weight=5",
    "data.min_steps=1",
    "data.rephrase=0.5",
    "data.small_numbers=0.3",
    "data.seed=21",
    "data.num_train=400000",
    "optim.batch_size=256",
    "optim.max_steps=461",
    "optim.lr=5e-4",
    "optim.eval_every=200",
)
# then, on the 2-core CPU, 667 more steps of 256 problems with the CODI weight at 1 (10 gave the same
# latent accuracy and 4 points less CoT): latent 23.4 -> 28.6%, CoT 92.4 -> 96.2% (docs/experiments.md,
# "Wide continuations on this CPU"); ~9.5 s a step on one core, 120 min (`optim.max_minutes=120`,
# where the schedule decayed on time; 667 steps is where it stopped). Both CPU stages were trained with
# `optim.mixed_precision=bf16`; the build runs them in fp32 (accelerate fixes the precision once a process)
CPU_WIDE = (
    "method.teacher_ce_weight=5",
    "method.codi_weight=1",
    "data.min_steps=1",
    "data.rephrase=0.5",
    "data.small_numbers=0.3",
    "data.seed=41",
    "data.num_train=200000",
    "optim.batch_size=256",
    "optim.max_steps=667",
    "optim.lr=3e-4",
    "optim.eval_every=200",
)
# and a short tail on the milder mix, batches grouped by length: 27.6% / 96.8%, and the README's apple
# question right again in latent mode (the wide run answered 8); 8.5 min on one core, 419 steps
CPU_TAIL = (
    "method.teacher_ce_weight=5",
    "method.codi_weight=1",
    "data.min_steps=1",
    "data.rephrase=0.3",
    "data.small_numbers=0.15",
    "data.seed=62",
    "data.num_train=20000",
    "data.group_by_length=16",
    "optim.max_steps=419",
    "optim.lr=2e-4",
    "optim.eval_every=200",
)
# (run dir under work, settings)
RUNS = (
    ("adapter", BUDGET),
    ("phrasing", PHRASING),
    ("more", MORE),
    ("tail", TAIL),
    ("wide", WIDE),
    ("cpu-wide", CPU_WIDE),
    ("cpu-tail", CPU_TAIL),
)


def _run(run_dir: Path, base_id: str, settings: tuple, stop_after: int | None) -> bool:
    """One resumable `kava train` run; True once its adapter is written."""
    if (run_dir / "adapter" / "kava_config.json").is_file():
        return True
    cfg = load_config(RECIPE, [f"base_model={base_id}", f"output_dir={run_dir}", "resume=auto", *settings])
    train(cfg, stop_after=stop_after)
    return (run_dir / "adapter" / "kava_config.json").is_file()


def build_adapter(work: Path, base_id: str, dest: Path, stop_after: int | None = None, overrides: tuple = ()) -> bool:
    """The chain of runs into `dest`; True once it is there (False: stopped early, resume later)."""
    if (dest / "kava_config.json").is_file():
        log.info("adapter already built at %s", dest)
        return True
    t0 = time.perf_counter()
    previous: Path | None = None
    for name, settings in RUNS:
        init = () if previous is None else (f"init_adapter={previous / 'adapter'}",)
        if not _run(work / name, base_id, (*init, *settings, *overrides), stop_after):
            return False
        previous = work / name
    shutil.copytree(previous / "adapter", dest, dirs_exist_ok=True)
    log.info("adapter built in %.1f min -> %s", (time.perf_counter() - t0) / 60, dest)
    return True
