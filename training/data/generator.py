"""Built-in generator of GSM-style arithmetic word problems, deterministic by seed.

Owns templated stories (a person holds some objects; they buy, give away, split, sell...)
that chain 2-4 integer steps, in both trace styles the method trains on: GSM8k-AUG
equations (`<<12+5=17>>`) or sentences that carry the same computation
(`Tom has 12+5=17 apples now.`). Every intermediate value is a non-negative integer no
larger than `max_value`, and division is always exact, so a small model can learn it.

Held-out scheme: the test set is `held_out_split(n)`, drawn from `HELD_OUT_SEED`; a
training run iterates `TrainStream(seed, exclude=test_set)`, which uses a different seed
*and* skips every problem whose question text is in the held-out set, so the two never
share problem text however long training runs.

Problem `i` of seed `s` depends only on `(s, i)`, so `generate(n, seed=s)` is a prefix of
`generate(n + 1, seed=s)` and of `iter_problems(s)`. Does not own file formats (`gsm8k`).
"""

from __future__ import annotations

import logging
import operator
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from itertools import count, islice
from typing import Literal

from kava.prompts import Example

log = logging.getLogger(__name__)

Style = Literal["equation", "nl"]
HELD_OUT_SEED = 1_000_003  # the seed of the fixed held-out set; training streams must use another

NAMES = (
    "Tom", "Ana", "Ben", "Maya", "Liam", "Sofia", "Noah", "Emma", "Omar", "Chloe", "Ravi", "Lena",
    "Jack", "Priya", "Leo", "Grace", "Sam", "Nora", "Eli", "Zoe", "Max", "Ivy", "Hugo", "Mia",
    "Owen", "Lucy", "Finn", "Ella", "Kai", "Ruby", "Theo", "Aisha", "Jonas", "Hana", "Diego",
    "Clara", "Felix", "Yara", "Oscar", "Nadia",
)  # fmt: skip
POSSESSIVE = {name: ("his", "her")[i % 2] for i, name in enumerate(NAMES)}  # NAMES alternate he/she
OBJECTS = (
    "apples", "marbles", "stickers", "pencils", "cookies", "books", "stamps", "shells", "cards",
    "toy cars", "oranges", "eggs", "candies", "balloons", "crayons", "beads", "buttons",
    "cupcakes", "flowers", "muffins", "comic books", "rocks", "ribbons", "lemons", "peaches",
    "notebooks", "erasers", "plums", "puzzles", "postcards",
)  # fmt: skip
CONTAINERS = (("boxes", "box"), ("bags", "bag"), ("packs", "pack"), ("jars", "jar"), ("baskets", "basket"))
TIMES = {2: "twice", 3: "three times", 4: "four times", 5: "five times"}


@dataclass(frozen=True)
class _State:
    holder: str  # whose count the chain is tracking now
    value: int
    obj: str
    cast: tuple[str, ...]  # names in story order; cast[0] is the first holder
    used: frozenset[str]  # names already mentioned (a new holder must be a fresh name)


@dataclass(frozen=True)
class _Move:
    story: str  # the sentence added to the question
    nl: str  # the NL-style step, containing `a op b = c` written as `a op b=c`
    a: int
    op: str
    b: int
    c: int
    state: _State
    question: str | None = None  # a final move fixes the question; None means "how many now?"


Op = Callable[[random.Random, _State, int], "_Move | None"]
APPLY: dict[str, Callable[[int, int], int]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.floordiv,
}


def _other(rng: random.Random, s: _State) -> str:
    return rng.choice([n for n in s.cast if n != s.holder])


def _poss(name: str) -> str:
    return POSSESSIVE[name]


def _fresh(s: _State) -> str | None:
    free = [n for n in s.cast if n not in s.used]
    return free[0] if free else None


def _move(
    s: _State,
    story: str,
    nl: str,
    a: int,
    op: str,
    b: int,
    c: int,
    *,
    holder: str | None = None,
    question: str | None = None,
) -> _Move:
    assert c >= 0 and APPLY[op](a, b) == c and (op != "/" or a % b == 0), (a, op, b, c)
    holder = holder or s.holder
    state = replace(s, holder=holder, value=c, used=s.used | {holder})
    return _Move(story, nl, a, op, b, c, state, question)


# 1. Middle moves: each is one equation and keeps the question "how many does X have?" ---------
# Every count that a sentence names is at least 2, so plural nouns always read right.
def _add(rng: random.Random, s: _State, top: int) -> _Move | None:
    if top - s.value < 2:
        return None
    k = rng.randint(2, min(top - s.value, max(2, top // 2)))
    h, o, x = s.holder, _other(rng, s), s.value
    story = rng.choice(
        (
            f"{h} buys {k} more {s.obj}.",
            f"{h} finds {k} more {s.obj}.",
            f"{o} gives {h} {k} {s.obj}.",
            f"{h} gets {k} more {s.obj} from {o}.",
        )
    )
    nl = rng.choice((f"{h} has {x}+{k}={x + k} {s.obj} now.", f"After that, {h} has {x}+{k}={x + k} {s.obj}."))
    return _move(replace(s, used=s.used | {o}), story, nl, x, "+", k, x + k)


def _sub(rng: random.Random, s: _State, top: int) -> _Move | None:
    if s.value < 4:
        return None
    k = rng.randint(2, s.value - 2)
    h, o, x, his = s.holder, _other(rng, s), s.value, _poss(s.holder)
    story = rng.choice(
        (
            f"{h} gives {k} {s.obj} to {o}.",
            f"{h} gives away {k} {s.obj}.",
            f"{h} loses {k} of {his} {s.obj}.",
            f"{h} sells {k} of {his} {s.obj}.",
        )
    )
    nl = rng.choice((f"{h} has {x}-{k}={x - k} {s.obj} left.", f"So {h} is left with {x}-{k}={x - k} {s.obj}."))
    return _move(replace(s, used=s.used | {o}), story, nl, x, "-", k, x - k)


def _times(rng: random.Random, s: _State, top: int) -> _Move | None:
    new, ks = _fresh(s), [k for k in TIMES if s.value * k <= top]
    if new is None or not ks:
        return None
    k, x = rng.choice(ks), s.value
    story = f"{new} has {TIMES[k]} as many {s.obj} as {s.holder}."
    return _move(s, story, f"{new} has {x}*{k}={x * k} {s.obj}.", x, "*", k, x * k, holder=new)


def _relative(rng: random.Random, s: _State, top: int) -> _Move | None:
    new, x = _fresh(s), s.value
    if new is None:
        return None
    if x >= 4 and (top - x < 2 or rng.random() < 0.5):
        k = rng.randint(2, x - 2)
        return _move(
            s,
            f"{new} has {k} fewer {s.obj} than {s.holder}.",
            f"{new} has {x}-{k}={x - k} {s.obj}.",
            x,
            "-",
            k,
            x - k,
            holder=new,
        )
    if top - x < 2:
        return None
    k = rng.randint(2, top - x)
    return _move(
        s,
        f"{new} has {k} more {s.obj} than {s.holder}.",
        f"{new} has {x}+{k}={x + k} {s.obj}.",
        x,
        "+",
        k,
        x + k,
        holder=new,
    )


def _divisors(x: int) -> list[int]:
    """Ways to split x into 2-10 equal parts of at least 2."""
    return [k for k in range(2, 11) if x % k == 0 and x // k >= 2]


def _split(rng: random.Random, s: _State, top: int) -> _Move | None:
    h, x, his = s.holder, s.value, _poss(s.holder)
    if 2 in _divisors(x) and rng.random() < 0.5:
        o = _other(rng, s)
        return _move(
            replace(s, used=s.used | {o}),
            f"{h} gives half of {his} {s.obj} to {o}.",
            f"{h} keeps {x}/2={x // 2} {s.obj}.",
            x,
            "/",
            2,
            x // 2,
        )
    if not _divisors(x):
        return None
    k = rng.choice(_divisors(x))
    return _move(
        s,
        f"{h} puts {his} {s.obj} into {k} equal piles and keeps only one pile.",
        f"{h} keeps {x}/{k}={x // k} {s.obj}.",
        x,
        "/",
        k,
        x // k,
    )


MIDDLE: tuple[Op, ...] = (_add, _sub, _times, _relative, _split)


# 2. Final moves: one equation that also sets the question ------------------------------------
def _sell(rng: random.Random, s: _State, top: int) -> _Move | None:
    ps = [p for p in range(2, 10) if s.value * p <= top]
    if not ps:
        return None
    p, h, x = rng.choice(ps), s.holder, s.value
    return _move(
        s,
        f"{h} sells all of {_poss(h)} {s.obj} for ${p} each.",
        f"{h} earns {x}*{p}={x * p} dollars.",
        x,
        "*",
        p,
        x * p,
        question=f"How many dollars does {h} earn?",
    )


def _share(rng: random.Random, s: _State, top: int) -> _Move | None:
    if not _divisors(s.value):
        return None
    k, h, x = rng.choice(_divisors(s.value)), s.holder, s.value
    return _move(
        s,
        f"{h} shares {_poss(h)} {s.obj} equally among {k} friends.",
        f"Each friend gets {x}/{k}={x // k} {s.obj}.",
        x,
        "/",
        k,
        x // k,
        question=f"How many {s.obj} does each friend get?",
    )


FINAL: tuple[Op, ...] = (_sell, _share)


# 3. One problem ------------------------------------------------------------------------------
def _opening(rng: random.Random, s: _State, top: int) -> tuple[str, _Move | None, _State]:
    """The first sentence; with a 'packs' opening it is already the first step."""
    h = s.holder
    packs = [(a, b) for a in range(2, 10) for b in range(2, 13) if a * b <= top]
    if packs and rng.random() < 0.3:
        (a, b), (many, one) = rng.choice(packs), rng.choice(CONTAINERS)
        story = f"{h} buys {a} {many} of {s.obj} with {b} {s.obj} in each {one}."
        move = _move(s, story, f"{h} has {a}*{b}={a * b} {s.obj}.", a, "*", b, a * b)
        return story, move, move.state
    x = rng.randint(2, max(3, top * 2 // 3))
    story = rng.choice((f"{h} has {x} {s.obj}.", f"{h} starts the day with {x} {s.obj}.", f"{h} owns {x} {s.obj}."))
    return story, None, replace(s, value=x)


def _problem(rng: random.Random, *, min_steps: int, max_steps: int, max_value: int, style: Style) -> Example:
    cast = tuple(rng.sample(NAMES, 5))
    state = _State(holder=cast[0], value=0, obj=rng.choice(OBJECTS), cast=cast, used=frozenset(cast[:1]))
    n_steps = rng.randint(min_steps, max_steps)
    opening, first, state = _opening(rng, state, max_value)
    story, moves = [opening], [first] if first else []
    while len(moves) < n_steps:
        last = len(moves) == n_steps - 1
        ops = list(FINAL) if last and rng.random() < 0.4 else []
        ops += rng.sample(MIDDLE, len(MIDDLE))
        move = next((m for m in (op(rng, state, max_value) for op in ops) if m is not None), None)
        assert move is not None, f"no move fits value={state.value} under max_value={max_value}"
        moves.append(move)
        state = move.state
        story.append(move.story)
    final = moves[-1]
    question = final.question or rng.choice(
        (
            f"How many {state.obj} does {state.holder} have now?",
            f"How many {state.obj} does {state.holder} have in the end?",
        )
    )
    if style == "equation":
        steps = tuple(f"<<{m.a}{m.op}{m.b}={m.c}>>" for m in moves)
    else:
        steps = tuple(m.nl for m in moves)
    return Example(question=" ".join([*story, question]), steps=steps, answer=str(final.c))


# 4. Public API -------------------------------------------------------------------------------
def _check(min_steps: int, max_steps: int, max_value: int, style: str) -> None:
    if not 1 <= min_steps <= max_steps:
        raise ValueError(f"need 1 <= min_steps <= max_steps, got min_steps={min_steps}, max_steps={max_steps}")
    if max_value < 12:
        raise ValueError(f"max_value={max_value} is too small for the templates; use 12 or more")
    if style not in ("equation", "nl"):
        raise ValueError(f"style must be 'equation' or 'nl', got {style!r}")


def iter_problems(
    seed: int, *, min_steps: int = 2, max_steps: int = 4, max_value: int = 100, style: Style = "equation"
) -> Iterator[Example]:
    """Infinite deterministic stream; problem i depends only on (seed, i). May repeat questions.

    The question and answer of problem i do not depend on `style`; only the steps do.
    """
    _check(min_steps, max_steps, max_value, style)  # here, not in the lazy generator below

    def stream() -> Iterator[Example]:
        for i in count():
            rng = random.Random(f"kava-gen:{seed}:{i}")  # str seeds hash with sha512: stable across runs
            yield _problem(rng, min_steps=min_steps, max_steps=max_steps, max_value=max_value, style=style)

    return stream()


def generate(
    n: int, *, seed: int, min_steps: int = 2, max_steps: int = 4, max_value: int = 100, style: Style = "equation"
) -> list[Example]:
    """The first n problems of `iter_problems(seed, ...)`."""
    stream = iter_problems(seed, min_steps=min_steps, max_steps=max_steps, max_value=max_value, style=style)
    return list(islice(stream, n))


def _key(question: str) -> str:
    return " ".join(question.split())  # whitespace-insensitive, so real files compare too


def held_out_split(
    n: int,
    seed: int = HELD_OUT_SEED,
    *,
    min_steps: int = 2,
    max_steps: int = 4,
    max_value: int = 100,
    style: Style = "equation",
) -> list[Example]:
    """A fixed test set of n problems with distinct questions, drawn from `seed`."""
    stream = iter_problems(seed, min_steps=min_steps, max_steps=max_steps, max_value=max_value, style=style)
    seen: set[str] = set()
    out: list[Example] = []
    for drawn, ex in enumerate(stream, 1):
        if _key(ex.question) not in seen:
            seen.add(_key(ex.question))
            out.append(ex)
        if len(out) == n:
            return out
        if drawn > 100 * n + 1000:
            raise ValueError(f"only {len(out)} distinct problems in {drawn} draws; lower n={n} or raise max_value")
    raise AssertionError("unreachable: the stream is infinite")


class TrainStream(Iterator[Example]):
    """Training problems from `seed` that never share question text with `exclude`.

    An iterator: it continues where it stopped, so `take(n)` twice gives 2n different draws.
    `exclude` takes `Example`s or question strings (the held-out set, or a real test file);
    `skipped` counts the draws dropped so far because their question was in `exclude`.
    """

    def __init__(
        self,
        seed: int,
        exclude: Iterable[Example | str] = (),
        *,
        min_steps: int = 2,
        max_steps: int = 4,
        max_value: int = 100,
        style: Style = "equation",
    ) -> None:
        if seed == HELD_OUT_SEED:
            raise ValueError(f"seed={seed} is HELD_OUT_SEED; a training stream needs a different seed")
        self.seed = seed
        self.exclude = frozenset(_key(e.question if isinstance(e, Example) else e) for e in exclude)
        self.skipped = 0
        self._stream = iter_problems(seed, min_steps=min_steps, max_steps=max_steps, max_value=max_value, style=style)

    def __next__(self) -> Example:
        for ex in self._stream:
            if _key(ex.question) not in self.exclude:
                return ex
            self.skipped += 1
        raise AssertionError("unreachable: the stream is infinite")

    def take(self, n: int) -> list[Example]:
        before = self.skipped
        out = list(islice(self, n))
        if self.skipped > before:
            log.info(
                "TrainStream(seed=%d): skipped %d held-out problems in %d draws",
                self.seed,
                self.skipped - before,
                n + self.skipped - before,
            )
        return out
