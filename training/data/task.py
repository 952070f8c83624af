"""The built-in task: generated GSM-style problems with a fixed held-out split.

The held-out set is `held_out_split(n)` (its own seed); training problems come from a
`TrainStream` that skips any question in that set, so no held-out text is ever trained on.
Questions and answers do not depend on the trace style, only the steps do.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from kava.prompts import Example
from training.data.generator import TrainStream, held_out_split
from training.data.paraphrase import paraphrase

TRAIN_SEED = 1
NUM_HELD_OUT = 500
MAX_VALUE = 100  # the task's largest number; a smaller one is another task with its own held-out split
SMALL_VALUE = 20  # `small_numbers` problems: sums like 3+4 that the full range rarely draws


def held_out(style: str = "equation", n: int = NUM_HELD_OUT, *, max_value: int = MAX_VALUE) -> list[Example]:
    return held_out_split(n, style=style, max_value=max_value)


def held_out_rephrased(style: str = "equation", n: int = NUM_HELD_OUT, *, max_value: int = MAX_VALUE) -> list[Example]:
    """The held-out problems asked the way people ask (every rewrite on; `kava eval`'s own row)."""
    problems = held_out(style, n, max_value=max_value)
    return [paraphrase(e, random.Random(f"kava-rephrased:{i}"), 1.0) for i, e in enumerate(problems)]


@dataclass(frozen=True)
class Shape:
    """The generated task's knobs: `max_value` picks the task (its held-out split and training
    stream); the rest shape the training stream only — problems of `min_steps`..4 steps, a
    `small_numbers` share with numbers up to `SMALL_VALUE`, a `rephrase` share asked the way
    people ask (`training.data.paraphrase`, each rewrite with chance 1/2)."""

    min_steps: int = 2
    max_value: int = MAX_VALUE
    rephrase: float = 0.0
    small_numbers: float = 0.0


def training_problems(style: str, n: int, seed: int = TRAIN_SEED, shape: Shape = Shape()) -> list[Example]:
    """`n` generated training problems of this shape; never a held-out question."""
    exclude = {e.question for e in held_out("equation", max_value=shape.max_value)}
    kw = dict(style=style, min_steps=shape.min_steps)
    main = TrainStream(seed, exclude, max_value=shape.max_value, **kw)
    if shape.small_numbers:
        exclude |= {e.question for e in held_out("equation", max_value=SMALL_VALUE)}
        small = TrainStream(seed, exclude, max_value=SMALL_VALUE, **kw)
        picks = [random.Random(f"kava-small:{seed}:{i}").random() < shape.small_numbers for i in range(n)]
        out = [next(small) if pick else next(main) for pick in picks]
    else:
        out = main.take(n)
    if shape.rephrase:
        for i, e in enumerate(out):
            rng = random.Random(f"kava-rephrase:{seed}:{i}")
            if rng.random() < shape.rephrase:
                out[i] = paraphrase(e, rng)
    return out


def mixed_styles(n: int, seed: int = TRAIN_SEED) -> list[Example]:
    """The same problems in both trace styles, alternating."""
    eq, nl = training_problems("equation", n, seed), training_problems("nl", n, seed)
    return [e if i % 2 == 0 else x for i, (e, x) in enumerate(zip(eq, nl))]


def resolve_examples(
    source: str, *, style: str, n: int | None, split: str, seed: int = TRAIN_SEED, shape: Shape = Shape()
) -> list[Example]:
    """A config's data source as examples. `builtin` is the generated task of this `shape`
    (the held-out split for evaluation, the excluded-stream for training); anything else goes
    through `load_examples` (files, `hub:`, `builtin:N:seed`). `n` caps the count (None = all)."""
    from training.data.gsm8k import load_examples

    if source == "builtin":
        count = n if n is not None else NUM_HELD_OUT
        if split == "eval":
            return held_out(style, count, max_value=shape.max_value)
        return training_problems(style, count, seed, shape)
    examples = list(load_examples(source, style=style))
    return examples[:n] if n is not None else examples
