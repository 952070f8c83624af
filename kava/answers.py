"""Answers compared as numbers (METHOD.md §6): the last number in a text, commas removed.

Owns number parsing and normalisation for evaluation and for the server's `answer`
field. Does not own any model code.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def normalize_number(token: str) -> str | None:
    """'1,000' -> '1000', '3.50' -> '3.5', '7.' -> '7', '-0' -> '0'; None if not a number."""
    try:
        value = Decimal(token.replace(",", "").rstrip("."))
    except InvalidOperation:
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def parse_number(text: str) -> str | None:
    """The last number in `text`, normalised; None when there is none."""
    found = _NUMBER.findall(text or "")
    for token in reversed(found):
        norm = normalize_number(token)
        if norm is not None:
            return norm
    return None


def extract_answer(text: str, answer_prompt: str | None = None) -> str | None:
    """The answer of a decoded continuation: the last number after the last answer prompt
    when the text has one (CoT mode writes steps first), else the last number."""
    if answer_prompt and answer_prompt.strip() in text:
        text = text.rsplit(answer_prompt.strip(), 1)[1]
    return parse_number(text)


def answers_match(predicted: str | None, reference: str | None) -> bool:
    if predicted is None or reference is None:
        return False
    a, b = normalize_number(predicted), normalize_number(reference)
    return a is not None and a == b
