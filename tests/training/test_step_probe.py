"""The step probe: one decoded text per written step, and the tally of exact steps and results."""

from __future__ import annotations

import pytest
from tiny import EXAMPLES, TINY_LORA, tiny_method

from kava.backbone import build_model
from training import step_probe


def test_one_decoded_text_per_written_step(tiny_bases):
    model = build_model(tiny_bases["llama"], tiny_method(drop_last_step=False), TINY_LORA).eval()
    texts = step_probe.decode_slots(model, EXAMPLES, max_new=4)
    assert [len(t) for t in texts] == [len(ex.steps) for ex in EXAMPLES]
    dropped = build_model(tiny_bases["llama"], tiny_method(drop_last_step=True), TINY_LORA).eval()
    assert [len(t) for t in step_probe.decode_slots(dropped, EXAMPLES, max_new=4)] == [
        len(ex.steps) - 1 if len(ex.steps) > 1 else 1 for ex in EXAMPLES
    ]  # drop_last_step keeps a lone step


def test_the_tally_counts_exact_steps_and_right_results(tiny_bases, monkeypatch):
    model = build_model(tiny_bases["llama"], tiny_method(drop_last_step=False), TINY_LORA)
    # right text for every step, except the second step of the first example: right result, other operands
    decoded = [list(ex.steps) for ex in EXAMPLES]
    decoded[0][1] = "<<2*7=14>>"
    monkeypatch.setattr(step_probe, "decode_slots", lambda m, exs: decoded[: len(exs)])
    got = step_probe.probe(model, EXAMPLES, batch_size=len(EXAMPLES))
    n_steps = sum(len(ex.steps) for ex in EXAMPLES)
    assert got["all"]["n"] == n_steps
    assert got["all"]["exact"] == pytest.approx((n_steps - 1) / n_steps)
    assert got["all"]["result"] == 1.0
    assert got["2"]["exact"] < 1.0 and got["1"]["exact"] == 1.0
