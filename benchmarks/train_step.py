"""What one training step costs: `python -m benchmarks.train_step` (reports, never asserts).

Times forward + backward of `kava.losses.training_step` on a recipe's model and built-in
data, three ways on the same examples: the student's prefill run from scratch
(`share_question=False`), the question's K/V taken from the teacher pass (the default), and
that with batches grouped by length (`data.group_by_length`). Prints seconds a step, examples a
second and the teacher rows' share of real tokens.

  python -m benchmarks.train_step [--recipe training/recipes/tiny-cpu.yaml] [--batch-size 32]
                                  [--steps 6] [--group 16] [--threads 1] [--bf16]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from kava.attention import NAME as SDPA_FP32
from kava.backbone import build_model
from kava.losses import training_step
from kava.prompts import encode_training_batch
from training.config import load_config
from training.data.sampler import EpochSampler
from training.data.task import Shape, resolve_examples
from training.run import teacher_lengths

TINY_RECIPE = Path(__file__).resolve().parents[1] / "training" / "recipes" / "tiny-cpu.yaml"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipe", default=str(TINY_RECIPE))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=6, help="timed steps per way, after one warm-up step")
    p.add_argument("--group", type=int, default=16, help="group_by_length for the grouped way")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (attention kept in fp32), as training does")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(args.recipe)
    attn = SDPA_FP32 if args.bf16 else "sdpa"
    model = build_model(cfg.base_model, cfg.method, cfg.lora, device=torch.device("cpu"), attn_implementation=attn)
    d, b = cfg.data, args.batch_size
    n = b * (args.steps + 1) * max(args.group, 1) * 2
    shape = Shape(d.min_steps, d.max_value, d.rephrase, d.small_numbers)
    examples = resolve_examples(d.train, style=d.style, n=n, split="train", seed=d.seed, shape=shape)
    lengths = teacher_lengths(model, examples)
    ways = [
        ("separate prefill", False, 0),
        ("shared question", True, 0),
        (f"shared + group {args.group}", True, args.group),
    ]
    print("| way | s / step | examples / s | teacher rows' real tokens |\n|---|---|---|---|")
    for name, share, group in ways:
        sampler = EpochSampler(len(examples), 0, lengths=lengths, batch=b, group=group)
        fill, t0 = [], 0.0
        for step in range(args.steps + 1):
            if step == 1:
                t0 = time.perf_counter()  # step 0 warms up
            batch = encode_training_batch(
                model.tokenizer, [examples[i] for i in sampler.indices(step * b, b)], model.config, model.ids
            )
            fill.append(float(batch.teacher_mask.float().mean()))
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                out = training_step(model, batch, share_question=share)
            out.total.backward()
        sec = (time.perf_counter() - t0) / args.steps
        print(f"| {name} | {sec:.2f} | {b / sec:.1f} | {100 * sum(fill) / len(fill):.0f}% |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
