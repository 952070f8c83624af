"""The built-in task: generated GSM-style problems with a fixed held-out split.

The held-out set is `held_out_split(n)` (its own seed); training problems come from a
`TrainStream` that skips any question in that set, so no held-out text is ever trained on.
Questions and answers do not depend on the trace style, only the steps do.
"""

from __future__ import annotations

import random

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


def training_problems(
    style: str,
    n: int,
    seed: int = TRAIN_SEED,
    *,
    min_steps: int = 2,
    max_value: int = MAX_VALUE,
    rephrase: float = 0.0,
    small_numbers: float = 0.0,
) -> list[Example]:
    """`n` generated problems of `min_steps`..4 steps, numbers up to `max_value` (a
    `small_numbers` share up to `SMALL_VALUE`); a `rephrase` share of them asked the way people
    ask (`training.data.paraphrase`), each rewrite with chance 1/2. Never a held-out question."""
    exclude = {e.question for e in held_out("equation", max_value=max_value)}
    main = TrainStream(seed, exclude, style=style, min_steps=min_steps, max_value=max_value)
    if small_numbers:
        exclude |= {e.question for e in held_out("equation", max_value=SMALL_VALUE)}
        small = TrainStream(seed, exclude, style=style, min_steps=min_steps, max_value=SMALL_VALUE)
        picks = [random.Random(f"kava-small:{seed}:{i}").random() < small_numbers for i in range(n)]
        out = [next(small) if pick else next(main) for pick in picks]
    else:
        out = main.take(n)
    if rephrase:
        for i, e in enumerate(out):
            rng = random.Random(f"kava-rephrase:{seed}:{i}")
            if rng.random() < rephrase:
                out[i] = paraphrase(e, rng)
    return out


def mixed_styles(n: int, seed: int = TRAIN_SEED) -> list[Example]:
    """The same problems in both trace styles, alternating."""
    eq, nl = training_problems("equation", n, seed), training_problems("nl", n, seed)
    return [e if i % 2 == 0 else x for i, (e, x) in enumerate(zip(eq, nl))]


def resolve_examples(
    source: str,
    *,
    style: str,
    n: int | None,
    split: str,
    seed: int = TRAIN_SEED,
    min_steps: int = 2,
    max_value: int = MAX_VALUE,
    rephrase: float = 0.0,
    small_numbers: float = 0.0,
) -> list[Example]:
    """A config's data source as examples. `builtin` is the generated task (the held-out
    split for evaluation, the excluded-stream for training); anything else goes through
    `load_examples` (files, `hub:`, `builtin:N:seed`). `n` caps the count (None = all).
    `max_value` picks the generated task (its held-out split and training stream); `min_steps`,
    `rephrase` and `small_numbers` shape the training stream only."""
    from training.data.gsm8k import load_examples

    if source == "builtin":
        count = n if n is not None else NUM_HELD_OUT
        if split == "eval":
            return held_out(style, count, max_value=max_value)
        return training_problems(
            style,
            count,
            seed,
            min_steps=min_steps,
            max_value=max_value,
            rephrase=rephrase,
            small_numbers=small_numbers,
        )
    examples = list(load_examples(source, style=style))
    return examples[:n] if n is not None else examples
