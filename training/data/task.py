"""The built-in task: generated GSM-style problems with a fixed held-out split.

The held-out set is `held_out_split(n)` (its own seed); training problems come from a
`TrainStream` that skips any question in that set, so no held-out text is ever trained on.
Questions and answers do not depend on the trace style, only the steps do.
"""

from __future__ import annotations

from kava.prompts import Example
from training.data.generator import TrainStream, held_out_split

TRAIN_SEED = 1
NUM_HELD_OUT = 500


def held_out(style: str = "equation", n: int = NUM_HELD_OUT) -> list[Example]:
    return held_out_split(n, style=style)


def training_problems(style: str, n: int, seed: int = TRAIN_SEED) -> list[Example]:
    exclude = {e.question for e in held_out("equation")}
    return TrainStream(seed, exclude, style=style).take(n)


def mixed_styles(n: int, seed: int = TRAIN_SEED) -> list[Example]:
    """The same problems in both trace styles, alternating."""
    eq, nl = training_problems("equation", n, seed), training_problems("nl", n, seed)
    return [e if i % 2 == 0 else x for i, (e, x) in enumerate(zip(eq, nl))]


def resolve_examples(source: str, *, style: str, n: int | None, split: str, seed: int = TRAIN_SEED) -> list[Example]:
    """A config's data source as examples. `builtin` is the generated task (the held-out
    split for evaluation, the excluded-stream for training); anything else goes through
    `load_examples` (files, `hub:`, `builtin:N:seed`). `n` caps the count (None = all)."""
    from training.data.gsm8k import load_examples

    if source == "builtin":
        count = n if n is not None else NUM_HELD_OUT
        return held_out(style, count) if split == "eval" else training_problems(style, count, seed)
    examples = list(load_examples(source, style=style))
    return examples[:n] if n is not None else examples
