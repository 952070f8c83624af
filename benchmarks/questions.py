"""What the benchmarks ask: the built-in held-out set (default), GSM8k's own questions, or a file.

Every question may carry its reference answer; the benchmarks report accuracy where one is
known. The held-out set is the built-in model's own (`training.data.task.held_out`), so its
answers are short and the latent/CoT ratios mean something; GSM8k questions are real-world
ones the built-in model cannot parse (answers run to the token limit), kept as an option
for backbones that can.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

GSM8K = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?",
    "Betty is saving money for a new wallet which costs $100. Betty has only half of the money she needs. Her parents "
    "decided to give her $15 for that purpose, and her grandparents twice as much as her parents. "
    "How much more money does Betty need to buy the wallet?",
    "James writes a 3-page letter to 2 different friends twice a week. How many pages does he write a year?",
    "A robe takes 2 bolts of blue fiber and half that much white fiber. How many bolts in total does it take?",
    "Tina makes $18.00 an hour. If she works more than 8 hours per shift, she is eligible for overtime, which is "
    "paid by your hourly wage + 1/2 your hourly wage. If she works 10 hours every day for 5 days, "
    "how much money does she make?",
    "A bakery sells 24 muffins in the morning and 3 times as many in the afternoon. How many muffins does it sell?",
    "Tom has 5 boxes with 12 pencils each. He gives away 17 pencils. How many pencils does he have left?",
    "A train travels 60 miles per hour for 3 hours and then 40 miles per hour for 2 hours. How far does it go?",
    "Sara buys 4 notebooks at $3 each and 2 pens at $1.50 each. How much does she spend?",
    "A garden has 8 rows of 15 tomato plants. 23 plants die. How many plants are left?",
    "Mike reads 25 pages a day. How many days does he need to finish a 300-page book?",
    "There are 30 students in a class. 40% of them are boys. How many girls are in the class?",
    "A shirt costs $40 and is on sale for 25% off. What is the sale price?",
    "Anna has 3 times as many stickers as Ben. Together they have 48 stickers. How many stickers does Anna have?",
    "A tank holds 500 liters. It leaks 12 liters an hour for 15 hours. How many liters are left?",
]
SOURCES = ("held-out", "gsm8k")


@dataclass(frozen=True)
class Question:
    text: str
    answer: str | None = None  # the reference, when known


def load_questions(source: str | Path | None = None, n: int | None = None) -> list[Question]:
    """`held-out` (default: the built-in task's held-out problems), `gsm8k` (a fixed list of
    GSM8k questions, no answers), or a JSONL file with a "question" (and optionally an
    "answer") per line. `n` takes the first n, cycling a shorter list."""
    source = "held-out" if source is None else source
    if source == "held-out":
        from training.data.task import NUM_HELD_OUT, held_out

        out = [Question(e.question, e.answer) for e in held_out("equation", max(n or 0, 1) if n else NUM_HELD_OUT)]
    elif source == "gsm8k":
        out = [Question(q) for q in GSM8K]
    else:
        out = _from_file(Path(source))
    if n is not None:
        out = [out[i % len(out)] for i in range(n)]
    return out


def _from_file(path: Path) -> list[Question]:
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not isinstance(row, dict) or not isinstance(row.get("question"), str):
            raise ValueError(f"{path}:{i}: each line must be a JSON object with a string 'question'")
        answer = row.get("answer")
        out.append(Question(row["question"], None if answer is None else str(answer)))
    if not out:
        raise ValueError(f"{path}: no questions")
    return out
