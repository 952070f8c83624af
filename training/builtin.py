"""Rebuild the project's built-in model from nothing: `python -m training.builtin`.

Stage 1 trains a tokenizer and a small Llama backbone from scratch on CoT sequences of
the built-in generator (both trace styles); stage 2 trains its KaVa adapter with the full
objective through the same code path as `kava train`. Both land in `kava/builtin/`.
Every stage checkpoints under `--work` and resumes when re-run. Held-out problems
(`held_out_split`) never enter training: the training stream excludes their text.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

from kava.builtin import BUILTIN_ADAPTER, BUILTIN_BASE, BUILTIN_DIR, BUILTIN_ID
from training.data.task import mixed_styles
from training.pretrain import BackboneShape, pretrain_backbone
from training.trainer import OptimSettings

log = logging.getLogger(__name__)

NUM_TRAIN = 40_000
BASE_SHAPE = BackboneShape()
SUMMARY_FILES = ("SHA256SUMS", "regression.json")
BASE_SETTINGS = OptimSettings(
    lr=2e-3, weight_decay=0.1, warmup_ratio=0.05, max_steps=900, batch_size=64, grad_clip=1.0, save_every=50
)


def build_base(
    work: Path,
    stop_after: int | None = None,
    *,
    dest: Path = BUILTIN_BASE,
    shape: BackboneShape = BASE_SHAPE,
    settings: OptimSettings = BASE_SETTINGS,
    num_train: int = NUM_TRAIN,
    internalize: float = 0.0,
    init: Path | None = None,
) -> bool:
    """Stage 1 into `dest`; True once it is there (False: stopped early, resume later).
    `internalize` and `init` are `pretrain_backbone`'s (off for the shipped base)."""
    if (dest / "config.json").is_file():
        log.info("base already built at %s", dest)
        return True
    t0 = time.perf_counter()
    done = pretrain_backbone(
        mixed_styles(num_train),
        work / "base",
        shape=shape,
        settings=settings,
        work_dir=work / "base.work",
        stop_after=stop_after,
        resume="auto",  # the builder's contract: re-running continues each stage
        internalize=internalize,
        init=init,
    )
    if done is None:
        return False
    shutil.copytree(done, dest, dirs_exist_ok=True)
    log.info("base built in %.1f min -> %s", (time.perf_counter() - t0) / 60, dest)
    return True


def finalize(n_probe: int = 500, n_keep: int = 8, *, root: Path = BUILTIN_DIR) -> None:
    """Record what the regression test checks: every shipped file's SHA-256, and held-out
    questions the built-in adapter (`root/adapter`) answers correctly in latent mode."""
    import hashlib
    import json

    from kava.adapters import load_adapter
    from kava.generate import solve_batch
    from training.data.task import held_out

    sums = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name not in SUMMARY_FILES):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        sums.append(f"{digest}  {path.relative_to(root)}")
    (root / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    model = load_adapter(root / "adapter", device="cpu", dtype="float32")
    probe = held_out("equation", n_probe)
    out = solve_batch(model, [e.question for e in probe], max_new_tokens=16).results
    keep = [(e, r) for e, r in zip(probe, out) if r.answer == e.answer][:n_keep]
    record = {
        "mode": "latent",
        "questions": [e.question for e, _ in keep],
        "answers": [e.answer for e, _ in keep],
        "texts": [r.text for _, r in keep],
        "probe_accuracy": sum(r.answer == e.answer for e, r in zip(probe, out)) / len(probe),
    }
    (root / "regression.json").write_text(json.dumps(record, indent=2) + "\n")
    log.info("recorded %d files' hashes and %d regression questions", len(sums), len(keep))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.builtin", description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("runs/builtin"), help="checkpoints and logs (resumable)")
    ap.add_argument("--stage", choices=["base", "adapter", "all"], default="all")
    ap.add_argument("--stop-after", type=int, default=None, help="stop each stage after N steps (resume later)")
    variant = ap.add_argument_group("backbone variants (--stage base only; the shipped base uses none)")
    variant.add_argument("--dest", type=Path, default=None, help="write the base here, not into kava/builtin/")
    variant.add_argument("--internalize", type=float, default=0.0, help="share of sequences with implicit first steps")
    variant.add_argument("--init", type=Path, default=None, help="continue this saved backbone")
    variant.add_argument("--layers", type=int, default=None, help="number of layers of a fresh backbone")
    variant.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the shipped base's)")
    variant.add_argument("--lr", type=float, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    is_variant = args.dest or args.internalize or args.init or args.layers or args.steps or args.lr
    if is_variant and (args.stage != "base" or not args.dest):
        ap.error("backbone variants need --stage base and --dest DIR (kava/builtin/ keeps the shipped base)")
    if is_variant:
        steps, lr = args.steps or BASE_SETTINGS.max_steps, args.lr or BASE_SETTINGS.lr
        shape = replace(BASE_SHAPE, num_layers=args.layers or BASE_SHAPE.num_layers)
        settings = replace(BASE_SETTINGS, max_steps=steps, lr=lr)
        build_base(
            args.work,
            args.stop_after,
            dest=args.dest,
            shape=shape,
            settings=settings,
            internalize=args.internalize,
            init=args.init,
        )
        return 0
    if args.stage in ("base", "all") and not build_base(args.work, args.stop_after):
        return 0
    if args.stage in ("adapter", "all"):
        from training.builtin_adapter import build_adapter

        if build_adapter(args.work, BUILTIN_ID, BUILTIN_ADAPTER, args.stop_after):
            finalize()
    return 0


if __name__ == "__main__":
    sys.exit(main())
