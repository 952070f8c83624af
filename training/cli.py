"""`kava train CONFIG [section.field=value ...]`: train an adapter from a config file.

Multi-GPU: `torchrun --nproc_per_node=N -m kava_cli.main train CONFIG` (each rank takes
its share of every batch; gradients are all-reduced). Re-running the same command resumes
from `<output_dir>/checkpoint`.
"""

from __future__ import annotations

import argparse
import json

from kava.config import ConfigError
from training.config import load_config


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", default=None, help="YAML or JSON run config (see training/recipes/)")
    p.add_argument("overrides", nargs="*", help="field overrides, e.g. optim.lr=1e-3 method.num_latents=8")
    p.add_argument("--stop-after", type=int, default=None, help="stop (checkpointed) after N total steps")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        raise SystemExit(f"kava train: {e}") from None
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    from training.run import train

    last = train(cfg, stop_after=args.stop_after)
    print(json.dumps(last, indent=2))
    return 0
