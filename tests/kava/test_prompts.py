"""Token layout of the two modes: spans, labels and the CODI position."""

from __future__ import annotations

from tiny import EXAMPLES, tiny_method

from kava.backbone import load_tokenizer
from kava.prompts import IGNORE, TokenIds, encode_training_batch


def test_codi_position_predicts_the_first_answer_digit_in_both_modes(tiny_bases):
    tok = load_tokenizer(tiny_bases["llama"])
    ids = TokenIds.from_tokenizer(tok)
    cfg = tiny_method()
    batch = encode_training_batch(tok, EXAMPLES, cfg, ids)
    for b, ex in enumerate(EXAMPLES):
        first_digit = tok(ex.answer[0], add_special_tokens=False)["input_ids"][0]
        t = int(batch.teacher_codi_pos[b])
        s = int(batch.student_codi_pos[b])
        # the tiny BPE splits " 14" into " ", "1", "4": the CODI position is the lone space
        assert tok.decode([int(batch.teacher_ids[b, t])]) == " "
        assert int(batch.teacher_labels[b, t]) == first_digit
        assert int(batch.suffix_labels[b, s]) == first_digit
        assert tok.decode([int(batch.suffix_ids[b, s])]) == " "


def test_spans_and_labels(tiny_bases):
    tok = load_tokenizer(tiny_bases["gpt2"])
    ids = TokenIds.from_tokenizer(tok)
    batch = encode_training_batch(tok, EXAMPLES, tiny_method(drop_last_step=True), ids)
    for b, ex in enumerate(EXAMPLES):
        cot = tok.decode(batch.teacher_ids[b][batch.cot_mask[b]].tolist())
        kept = ex.steps[:-1] if len(ex.steps) > 1 else ex.steps
        assert cot.strip() == " ".join(kept)
        answer = tok.decode(batch.teacher_ids[b][batch.answer_mask[b]].tolist())
        assert answer.strip() == f"The answer is: {ex.answer}"
        q_len = int(batch.cot_mask[b].nonzero()[0]) if batch.cot_mask[b].any() else None
        assert q_len is not None and (batch.teacher_labels[b, : q_len - 1] == IGNORE).all()
    assert int(batch.suffix_ids[0, 0]) == ids.eot
    assert int(batch.prefix.input_ids[0, -1]) == ids.bot
