"""Rewrite a generated problem's question the way people ask it, for training (issue 10, part 3).

The generator writes every sentence in full: `Tom has 3 apples. Tom buys 4 more apples. How
many apples does Tom have now?`. People write `Tom has 3 apples and buys 4 more. How many
apples does he have?`. `paraphrase(example, rng)` applies, each with its own chance, the
rewrites that the generator's own templates make safe, so the numbers, the steps and the
answer never change:

- **join**: a sentence whose subject is the previous sentence's joins it with `and`;
- **pronoun**: a sentence (or the question) about the previous sentence's subject says he/she;
- **more**: `buys 4 more apples.` drops the object that the story already named;
- **past**: the story in the past tense (`had`, `bought`, `gave away`), the question in the present;
- **question**: `have?`, `have now?`, `have left?` (after taking away), `have in total?` /
  `altogether?` (after adding), and sometimes a lower-case `how many`.

Only the training stream is rewritten (`training.data.task.training_problems`); the held-out
split stays as generated, so its numbers compare across runs. Owns no templates of its own
beyond these word maps; the generator owns the stories.
"""

from __future__ import annotations

import random
import re
from dataclasses import replace

from kava.prompts import Example
from training.data.generator import POSSESSIVE

PAST = {
    "has": "had", "buys": "bought", "finds": "found", "gives": "gave", "gets": "got", "loses": "lost",
    "sells": "sold", "owns": "owned", "puts": "put", "keeps": "kept", "shares": "shared", "starts": "started",
}  # fmt: skip
_PRONOUN = {"his": "he", "her": "she"}
_TAKEN = re.compile(r"\b(?:gives|gave) (?:away|\d+ [a-z ]+ to)\b|\b(?:loses|lost|sells|sold) \d")
_GOT = re.compile(r"\b(?:buys|bought|finds|found|gets|got) \d+ more\b|\b(?:gives|gave) [A-Z]\w* \d")
_MORE = re.compile(r"^(.* (?:buys|finds|bought|found) \d+ more) ([a-z ]+)\.$")
_HAVE = re.compile(r"^How many ([a-z ]+) does (\w+) have(?: now| in the end)?\?$")


def _subject(sentence: str) -> str:
    return sentence.split(" ", 1)[0]


def _pronoun(name: str) -> str | None:
    return _PRONOUN[POSSESSIVE[name]] if name in POSSESSIVE else None


def _past(sentence: str) -> str:
    return " ".join(PAST.get(w, w) for w in sentence.split(" "))  # PAST's words are verbs only


def _question(q: str, last: str, rng: random.Random) -> str:
    """`last` is the story's last sentence: `left` follows a taking away, `in total` a getting."""
    m = _HAVE.match(q)
    if m is None:
        return q
    obj, who = m.groups()
    ends = ["have?", "have now?"]
    if _TAKEN.search(last):
        ends.append("have left?")
    elif _GOT.search(last):
        ends += ["have in total?", "have altogether?"]
    return f"How many {obj} does {who} {rng.choice(ends)}"


def paraphrase(example: Example, rng: random.Random, p: float = 0.5) -> Example:
    """`example` with its question rewritten; each rewrite is applied with chance `p`."""
    *story, question = re.split(r"(?<=[.?])\s+", example.question.strip())
    if not story or not question.endswith("?"):
        return example
    past = rng.random() < p
    out: list[str] = []
    prev = None  # the subject of the sentence before
    for s in story:
        subj = _subject(s)
        if past:
            s = _past(s)
        m = _MORE.match(s)
        if m and m.group(2) in " ".join(out) and rng.random() < p:
            s = f"{m.group(1)}."
        he = _pronoun(subj) if subj == prev else None
        if he and out and " and " not in out[-1] and rng.random() < p:
            out[-1] = f"{out[-1][:-1]} and {s[len(subj) + 1 :]}"  # join
        elif he and rng.random() < p:
            out.append(f"{he.capitalize()} {s[len(subj) + 1 :]}")
        else:
            out.append(s)
        prev = subj
    he = _pronoun(prev) if f" does {prev} " in question and rng.random() < p else None
    if he:
        question = question.replace(f" does {prev} ", f" does {he} ")
    if rng.random() < p:
        question = _question(question, out[-1], rng)
    if rng.random() < p / 4:
        question = question[0].lower() + question[1:]
    return replace(example, question=" ".join([*out, question]))
