"""`kava train CONFIG [section.field=value ...]`: train an adapter from a config file.

Several GPUs (one process each; accelerate joins them):
  torchrun --nproc_per_node=8 -m kava_cli.main train CONFIG
  accelerate launch --num_processes=8 -m kava_cli.main train CONFIG
An output_dir that holds a checkpoint is refused unless `--resume` (or `resume: auto`) asks
to continue it; a resume with changed settings is refused naming each field, and
`--override-resume` accepts the safe ones (`training.resume`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from kava.config import ConfigError
from training.config import load_config


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", default=None, help="YAML or JSON run config (see training/recipes/)")
    p.add_argument("overrides", nargs="*", help="field overrides, e.g. optim.lr=1e-3 method.num_latents=8")
    p.add_argument("--stop-after", type=int, default=None, help="stop (checkpointed) after N total steps")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the newest checkpoint-<step>/ in output_dir (same as resume=auto; starts fresh if none)",
    )
    p.add_argument(
        "--override-resume",
        action="store_true",
        help="resume even though safe settings changed (max_steps, save/log/eval cadence, eval, trackers); "
        "each accepted change is logged",
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        raise SystemExit(f"kava train: {e}") from None
    if args.resume or args.override_resume:
        cfg = dataclasses.replace(cfg, resume="auto")
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    from training.run import train

    try:
        last = train(cfg, stop_after=args.stop_after, override_resume=args.override_resume)
    except ConfigError as e:  # the resume rules and device checks, before any model loads
        raise SystemExit(f"kava train: {e}") from None
    if last:
        print(json.dumps(last, indent=2))
    return 0
