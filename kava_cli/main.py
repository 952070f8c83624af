"""`kava <command>`: dispatch to the module that owns each subcommand.

Only the chosen command's module is imported, so `kava solve` (an HTTP client) never
loads torch. Each module exposes `add_arguments(parser)` and `run(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    # name: (module, one-line help)
    "serve": ("server.cli", "run the inference server (default: the built-in model on 127.0.0.1:8000)"),
    "bench": ("benchmarks.cli", "benchmark HF generate vs kava CoT vs kava latent, and the served throughput"),
    "train": ("training.cli", "train a KaVa (or baseline) adapter from a config file"),
    "eval": ("training.evaluate", "measure accuracy, forward passes and time per question"),
    "solve": ("kava_cli.solve", "ask a running server one question (the SDK's command-line face)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = argparse.ArgumentParser(prog="kava", description="KaVa latent reasoning: train, evaluate and serve.")
    sub = top.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] not in COMMANDS:
        top.parse_args(argv or ["--help"])
        return 2
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"kava {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
