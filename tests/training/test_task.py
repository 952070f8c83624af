"""The built-in task's settings: the training stream asked the way people ask (rewrites that
keep every number, step and answer), one-step problems, and a smaller largest number."""

from __future__ import annotations

import random
import re

import pytest

from kava.config import ConfigError
from kava.prompts import Example
from training.config import build_config
from training.data import generate
from training.data.paraphrase import paraphrase
from training.data.task import Shape, held_out, resolve_examples, training_problems

NUMBER = re.compile(r"\d+")


def _numbers(text: str) -> list[str]:
    return NUMBER.findall(text)


def test_rewrites_keep_every_number_step_and_answer() -> None:
    changed = 0
    for i, ex in enumerate(generate(2000, seed=3, min_steps=1)):
        for p in (0.5, 1.0):
            new = paraphrase(ex, random.Random(i), p)
            assert (new.steps, new.answer) == (ex.steps, ex.answer)
            assert _numbers(new.question) == _numbers(ex.question), (ex.question, new.question)
            assert new.question.rstrip().endswith("?") and new.question.count("?") == 1
            changed += new.question != ex.question
    assert changed >= 3000  # nearly every problem has something to rewrite


def test_the_way_people_ask() -> None:
    ex = Example("Tom has 3 apples. Tom buys 4 more apples. How many apples does Tom have now?", ("<<3+4=7>>",), "7")
    q = paraphrase(ex, random.Random(0), p=1.0).question.lower()
    assert q.startswith("tom had 3 apples and bought 4 more. how many apples does he have")
    assert q.endswith(("have?", "have now?", "have in total?", "have altogether?"))
    q = "Ana owns 9 shells. Ana loses 2 of her shells. How many shells does Ana have in the end?"
    ex = Example(q, ("<<9-2=7>>",), "7")
    seen = {paraphrase(ex, random.Random(i), p=1.0).question.lower() for i in range(40)}
    assert "ana owned 9 shells and lost 2 of her shells. how many shells does she have left?" in seen
    assert not any("in total" in q or "altogether" in q for q in seen)  # nothing was added


def test_left_follows_a_taking_away_and_in_total_a_getting() -> None:
    for i, ex in enumerate(generate(3000, seed=5, min_steps=1)):
        q = paraphrase(ex, random.Random(i), 1.0).question
        last = re.split(r"(?<=[.])\s+", q)[-2]
        if q.endswith("left?"):
            assert re.search(r"\b(gave|lost|sold)\b", last), q
        if q.endswith(("in total?", "altogether?")):
            assert re.search(r"\b(bought|found|got|gave [A-Z])", last), q


def test_training_stream_settings() -> None:
    plain = training_problems("equation", 300, seed=4)
    assert training_problems("equation", 300, 4, Shape(rephrase=0.0)) == plain
    mixed = training_problems("equation", 300, 4, Shape(rephrase=0.5))
    assert mixed == training_problems("equation", 300, 4, Shape(rephrase=0.5))  # deterministic
    assert [(e.steps, e.answer) for e in mixed] == [(e.steps, e.answer) for e in plain]
    assert 90 <= sum(a.question != b.question for a, b in zip(mixed, plain)) <= 210
    short = training_problems("equation", 400, 4, Shape(min_steps=1))
    assert min(len(e.steps) for e in short) == 1 and min(len(e.steps) for e in plain) == 2
    assert not {e.question for e in held_out()} & {e.question for e in short}


def test_max_value_is_its_own_task_with_its_own_held_out_split() -> None:
    small = resolve_examples("builtin", style="equation", n=300, split="eval", shape=Shape(max_value=20))
    assert small == held_out("equation", 300, max_value=20) and small != held_out("equation", 300)
    values = [int(v) for e in small for s in e.steps for v in re.findall(r"\d+", s)]
    assert max(values) <= 20 and max(int(e.answer) for e in small) > 10
    train = resolve_examples("builtin", style="equation", n=3000, split="train", shape=Shape(max_value=20))
    assert max(int(v) for e in train for s in e.steps for v in re.findall(r"\d+", s)) <= 20
    assert not {e.question for e in held_out("equation", max_value=20)} & {e.question for e in train}


def test_a_share_of_small_number_problems() -> None:
    plain = training_problems("equation", 400, seed=4)
    mixed = training_problems("equation", 400, 4, Shape(small_numbers=0.25))
    assert mixed == training_problems("equation", 400, 4, Shape(small_numbers=0.25))

    def top(e: Example) -> int:
        return max(int(v) for s in e.steps for v in re.findall(r"\d+", s))

    assert 60 <= sum(top(e) <= 20 for e in mixed) - sum(top(e) <= 20 for e in plain) <= 140
    held = {e.question for e in held_out()} | {e.question for e in held_out(max_value=20)}
    assert not held & {e.question for e in training_problems("equation", 4000, 4, Shape(small_numbers=0.5))}


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("min_steps", 0, "data.min_steps=0"),
        ("min_steps", 5, "data.min_steps=5"),
        ("rephrase", 1.5, "data.rephrase=1.5"),
        ("max_value", 11, "data.max_value=11"),
        ("small_numbers", -0.1, "data.small_numbers=-0.1"),
        ("group_by_length", -1, "data.group_by_length=-1"),
        ("group_by_length", 1.5, "data.group_by_length=1.5"),
    ],
)
def test_bad_data_settings_name_the_field(field: str, value: object, needle: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(needle)):
        build_config({"data": {field: value}})
