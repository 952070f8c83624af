"""Answers compared as numbers (METHOD.md §6): the last number in a text, commas removed.

Owns number parsing and normalisation for evaluation, data loading and the server's
`answer` field. Does not own any model code.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

# a number not glued to a word: optional minus, 1,000-style groups or plain digits, decimals, .5
_NUMBER = re.compile(r"(?<![\w.])-?(?:(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)")


def parse_number(text: str) -> str | None:
    """The last number in `text`, commas removed and normalised ("3.50" -> "3.5",
    "1,000" -> "1000", "7." -> "7"); None if there is none."""
    found = _NUMBER.findall(str(text))
    if not found:
        return None
    try:
        value = Decimal(found[-1].replace(",", ""))
    except InvalidOperation:  # the pattern only admits valid literals; be safe at the boundary
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def same_number(a: str | None, b: str | None) -> bool:
    """Whether the last numbers in `a` and `b` are equal (False when either has none)."""
    x, y = parse_number(a or ""), parse_number(b or "")
    return x is not None and y is not None and Decimal(x) == Decimal(y)


def extract_answer(text: str, answer_prompt: str | None = None) -> str | None:
    """The answer of a decoded continuation: the last number after the last answer prompt
    when the text has one (CoT mode writes steps first), else the last number."""
    if answer_prompt and answer_prompt.strip() in text:
        text = text.rsplit(answer_prompt.strip(), 1)[1]
    return parse_number(text)
