"""Tests for training.data: the built-in generator, the held-out scheme and the GSM8k readers."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

from kava.prompts import Example
from training.data import (
    HELD_OUT_SEED,
    TrainStream,
    generate,
    held_out_split,
    iter_problems,
    load_examples,
    parse_number,
    read_aug_records,
    read_gsm8k_aug_txt,
    read_gsm8k_jsonl,
    same_number,
)

EQUATION = re.compile(r"^<<(\d+)([+\-*/])(\d+)=(\d+)>>$")
NL_COMPUTATION = re.compile(r"(\d+)([+\-*/])(\d+)=(\d+)")
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b}


def _shared_data() -> Path:
    env = os.environ.get("KAVA_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="module")
def data_dir() -> Path:
    d = _shared_data()
    if not (d / "gsm8k").is_dir() or not (d / "gsm8k-aug").is_dir():
        pytest.skip(f"real GSM8k files not found at {d}; set KAVA_SHARED_DATA to the shared/data folder")
    return d


def _chain(steps: list[tuple[int, str, int, int]], answer: str, max_value: int) -> None:
    """Each step is arithmetically right, feeds the next, stays in range, and ends at the answer."""
    for i, (a, op, b, c) in enumerate(steps):
        assert OPS[op](a, b) == c, (a, op, b, c)
        assert 0 <= c <= max_value and 0 <= a <= max_value
        if i:
            assert a == steps[i - 1][3], steps
    assert str(steps[-1][3]) == answer


def _parse_equations(ex: Example) -> list[tuple[int, str, int, int]]:
    parsed = [EQUATION.match(s) for s in ex.steps]
    assert all(parsed), ex.steps
    return [(int(m[1]), m[2], int(m[3]), int(m[4])) for m in parsed if m]


# 1. Generator --------------------------------------------------------------------------------
def test_generate_is_deterministic_by_seed() -> None:
    assert generate(50, seed=3) == generate(50, seed=3)
    assert generate(50, seed=3, style="nl") == generate(50, seed=3, style="nl")
    assert generate(50, seed=3) != generate(50, seed=4)


def test_generate_is_a_prefix_of_the_stream() -> None:
    stream = iter_problems(9)
    assert [next(stream) for _ in range(20)] == generate(20, seed=9)
    assert generate(30, seed=9)[:20] == generate(20, seed=9)


def test_generator_output_is_pinned() -> None:
    # Seeded datasets must not drift silently: a template change shows up here first.
    assert generate(1, seed=0)[0] == Example(
        question="Finn starts the day with 44 rocks. Felix has twice as many rocks as Finn. "
        "Felix gives 71 rocks to Hana. How many rocks does Felix have now?",
        steps=("<<44*2=88>>", "<<88-71=17>>"),
        answer="17",
    )


@pytest.mark.parametrize(("lo", "hi"), [(1, 1), (2, 4), (3, 3), (4, 4)])
def test_step_counts_within_bounds(lo: int, hi: int) -> None:
    counts = {len(ex.steps) for ex in generate(300, seed=1, min_steps=lo, max_steps=hi)}
    assert counts == set(range(lo, hi + 1))


@pytest.mark.parametrize("max_value", [12, 100, 1000])
def test_equation_chain_evaluates_to_answer(max_value: int) -> None:
    for ex in generate(500, seed=2, max_value=max_value):
        steps = _parse_equations(ex)
        _chain(steps, ex.answer, max_value)
        # well-posed: the first operand and every +/- operand are stated in the question
        stated = set(re.findall(r"\d+", ex.question))
        assert str(steps[0][0]) in stated, ex
        assert {str(b) for _, op, b, _ in steps if op in "+-"} <= stated, ex
        assert ex.question.endswith("?")


def test_nl_steps_carry_the_same_computation() -> None:
    eq, nl = generate(300, seed=5), generate(300, seed=5, style="nl")
    for e, n in zip(eq, nl, strict=True):
        assert (e.question, e.answer) == (n.question, n.answer)
        found = [NL_COMPUTATION.findall(s) for s in n.steps]
        assert all(len(f) == 1 for f in found), n.steps
        steps = [(int(a), op, int(b), int(c)) for ((a, op, b, c),) in found]
        assert steps == _parse_equations(e)
        _chain(steps, n.answer, 100)
        assert all(s.endswith(".") and not s.startswith("<<") for s in n.steps)


def test_questions_are_varied() -> None:
    questions = {ex.question for ex in generate(5000, seed=11)}
    assert len(questions) >= 4950


def test_bad_generator_options_raise() -> None:
    with pytest.raises(ValueError, match="min_steps"):
        generate(1, seed=0, min_steps=3, max_steps=2)
    with pytest.raises(ValueError, match="max_value"):
        generate(1, seed=0, max_value=5)
    with pytest.raises(ValueError, match="style"):
        generate(1, seed=0, style="latex")  # type: ignore[arg-type]


# 2. Held-out scheme --------------------------------------------------------------------------
def test_held_out_is_fixed_and_distinct() -> None:
    held = held_out_split(300)
    assert held == held_out_split(300)
    assert len({ex.question for ex in held}) == 300


def test_train_stream_never_yields_held_out() -> None:
    held = held_out_split(500)
    stream = TrainStream(0, held)
    train = stream.take(20_000)
    assert len(train) == 20_000
    assert not {ex.question for ex in held} & {ex.question for ex in train}


def test_train_stream_skips_excluded_questions() -> None:
    # Exclude the stream's own first draws, so the filter has to act rather than rely on seeds.
    excluded = generate(200, seed=7)
    stream = TrainStream(7, excluded)
    first, more = stream.take(500), stream.take(500)
    assert stream.skipped >= 200
    assert not {ex.question for ex in excluded} & {ex.question for ex in first + more}
    assert first != more  # an iterator: take() continues where it stopped


def test_train_stream_rejects_the_held_out_seed() -> None:
    with pytest.raises(ValueError, match="HELD_OUT_SEED"):
        TrainStream(HELD_OUT_SEED)


# 3. Numbers ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1,000", "1000"), ("3.50", "3.5"), ("-2", "-2"), ("7.", "7"), ("The answer is 72.", "72"),
        ("$1,234,567.00", "1234567"), ("grows .5 inches", "0.5"), ("12-5=7", "7"), ("x = -3", "-3"),
        ("-0", "0"), ("1,2,3", "3"), ("#### 18", "18"), ("no number here", None), ("", None),
    ],
)  # fmt: skip
def test_parse_number(text: str, expected: str | None) -> None:
    assert parse_number(text) == expected


def test_same_number() -> None:
    assert same_number("The answer is 1,000.", "1000")
    assert same_number("3.50", "3.5")
    assert not same_number("72", "73")
    assert not same_number("none", "none")


# 4. Real files -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "rows"),
    [("gsm8k/train.jsonl", 7473), ("gsm8k/test.jsonl", 1319), ("gsm8k-aug/test.txt", 1319),
     ("gsm8k-aug/valid.txt", 500)],
)  # fmt: skip
def test_real_file_row_counts(data_dir: Path, name: str, rows: int) -> None:
    examples = load_examples(data_dir / name)
    assert len(examples) == rows
    assert examples.skipped == 0


def test_gsm8k_first_train_row_in_both_styles(data_dir: Path) -> None:
    eq = read_gsm8k_jsonl(data_dir / "gsm8k/train.jsonl", "equation")[0]
    nl = read_gsm8k_jsonl(data_dir / "gsm8k/train.jsonl", "nl")[0]
    assert eq.question.startswith("Natalia sold clips to 48 of her friends")
    assert eq.steps == ("<<48/2=24>>", "<<48+24=72>>")
    assert nl.steps == ("Natalia sold 48/2 = 24 clips in May.",
                        "Natalia sold 48+24 = 72 clips altogether in April and May.")  # fmt: skip
    assert eq.answer == nl.answer == "72"


def test_gsm8k_aug_first_rows(data_dir: Path) -> None:
    test = read_gsm8k_aug_txt(data_dir / "gsm8k-aug/test.txt")[0]
    assert test.question.startswith("Janet’s ducks lay 16 eggs per day.")
    assert (test.steps, test.answer) == (("<<16-3-4=9>>", "<<9*2=18>>"), "18")
    valid = read_gsm8k_aug_txt(data_dir / "gsm8k-aug/valid.txt")[0]
    assert valid.steps == ("<<4-2=2>>", "<<2/.5=4>>", "<<12/4=3>>", "<<100*3=300>>")
    assert valid.answer == "300"


def test_gsm8k_test_converts_to_the_released_aug_test(data_dir: Path) -> None:
    ours = read_gsm8k_jsonl(data_dir / "gsm8k/test.jsonl", "equation")
    released = read_gsm8k_aug_txt(data_dir / "gsm8k-aug/test.txt")
    assert [(e.steps, e.answer) for e in ours] == [(e.steps, e.answer) for e in released]


def test_all_test_answers_parse_as_numbers(data_dir: Path) -> None:
    for name in ("gsm8k/test.jsonl", "gsm8k-aug/test.txt"):
        examples = load_examples(data_dir / name)
        assert all(parse_number(ex.answer) == ex.answer for ex in examples)
    assert "2125" in {ex.answer for ex in examples}  # "2,125" in the file, commas removed


def test_nl_steps_have_no_annotations(data_dir: Path) -> None:
    examples = read_gsm8k_jsonl(data_dir / "gsm8k/test.jsonl", "nl")
    assert all(ex.steps for ex in examples)
    assert not any("<<" in s or ">>" in s or "####" in s for ex in examples for s in ex.steps)


def test_directory_and_split(data_dir: Path) -> None:
    assert len(load_examples(data_dir / "gsm8k", split="test", style="nl")) == 1319
    assert len(load_examples(data_dir / "gsm8k-aug", split="valid")) == 500
    with pytest.raises(ValueError, match="split="):
        load_examples(data_dir / "gsm8k")
    with pytest.raises(ValueError, match="equation steps only"):
        load_examples(data_dir / "gsm8k-aug/test.txt", style="nl")


# 5. Dispatch and bad input -------------------------------------------------------------------
def test_builtin_source() -> None:
    assert load_examples("builtin:20:4", style="nl") == generate(20, seed=4, style="nl")
    with pytest.raises(ValueError, match="builtin:N:seed"):
        load_examples("builtin:20")


def test_missing_file_error_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_examples(missing)
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        read_gsm8k_jsonl(missing)


def test_unparseable_rows_are_counted_not_hidden(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "raw.jsonl"
    rows = [
        json.dumps({"question": "Q1?", "answer": "a <<1+1=2>>2\n#### 2"}),
        "{not json",
        json.dumps({"question": "Q2?", "answer": "no final line"}),
        json.dumps({"question": "Q3?", "answer": "#### none"}),
        json.dumps({"answer": "#### 4"}),
        json.dumps({"question": "Q5?", "answer": "x <<10*100=1000>>1,000\n\n#### 1,000"}),
    ]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    examples = load_examples(path)
    assert [ex.answer for ex in examples] == ["2", "1000"]
    assert examples.skipped == 4
    assert "skipped 4 unparseable row(s)" in caplog.text
    with pytest.raises(ValueError, match=re.escape(f"{path}:2")):
        load_examples(path, strict=True)


def test_aug_records_jsonl_and_parquet(tmp_path: Path) -> None:
    records = [{"question": "Q?", "steps": ["<<2+3=5>>", "<<5*2=10>>"], "answer": "10"},
               {"question": "R?", "steps": "<<1+1=2>>", "answer": "2"}]  # fmt: skip
    path = tmp_path / "aug.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records), encoding="utf-8")
    expected = [Example("Q?", ("<<2+3=5>>", "<<5*2=10>>"), "10")]
    got = load_examples(path)  # told apart from raw GSM8k by its `steps` key
    assert (got, got.skipped) == (expected, 1)
    pq = pytest.importorskip("pyarrow.parquet")
    pa = pytest.importorskip("pyarrow")
    pq.write_table(pa.Table.from_pylist(records[:1]), tmp_path / "aug.parquet")
    assert read_aug_records(tmp_path / "aug.parquet") == expected
    assert load_examples(tmp_path / "aug.parquet") == expected


def test_hub_without_datasets_says_how_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # import now fails as if not installed
    with pytest.raises(ImportError, match="pip install datasets"):
        load_examples("hub:whynlp/gsm8k-aug")


def test_unknown_extension(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("q,a\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"\.jsonl, \.txt or \.parquet"):
        load_examples(tmp_path / "data.csv")
