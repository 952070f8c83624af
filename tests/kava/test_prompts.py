"""Token layout of the two modes: spans, labels and the CODI position."""

from __future__ import annotations

import pytest
import torch
from tiny import EXAMPLES, tiny_method

from kava.backbone import load_tokenizer
from kava.prompts import IGNORE, TokenIds, encode_training_batch, trace_steps


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


# Curriculum stages (encode_training_batch(written_from=k)) ---------------------------------
def _stage_batches(tok, ids, cfg):
    return {k: encode_training_batch(tok, EXAMPLES, cfg, ids, written_from=k) for k in (1, 2, 3)}


@pytest.mark.parametrize("drop_last_step", [False, True])
@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_curriculum_stage_writes_exactly_the_remaining_steps(tiny_bases, name, drop_last_step):
    tok = load_tokenizer(tiny_bases[name])
    ids = TokenIds.from_tokenizer(tok)
    cfg = tiny_method(drop_last_step=drop_last_step)
    plain = encode_training_batch(tok, EXAMPLES, cfg, ids)
    eos = tok.decode([ids.eos])
    for k, batch in _stage_batches(tok, ids, cfg).items():
        # the teacher pass is the same in every stage
        for f in ("teacher_ids", "teacher_mask", "teacher_labels", "cot_mask", "answer_mask", "teacher_codi_pos"):
            assert torch.equal(getattr(batch, f), getattr(plain, f)), f
        for b, ex in enumerate(EXAMPLES):
            kept = trace_steps(ex.steps, cfg)
            written = " ".join(kept[k:])
            assert int(batch.suffix_ids[b, 0]) == ids.eot
            supervised = batch.suffix_labels[b][batch.suffix_labels[b] != IGNORE].tolist()
            expected = (" " + written if written else "") + f" The answer is: {ex.answer}{eos}"
            assert tok.decode(supervised) == expected, (k, b)
            # labels are the next tokens of the real suffix, and nothing past it
            n = int(batch.suffix_mask[b].sum())
            assert batch.suffix_labels[b, : n - 1].tolist() == batch.suffix_ids[b, 1:n].tolist()
            assert (batch.suffix_labels[b, n - 1 :] == IGNORE).all()
            if len(kept) <= k:  # nothing left to write: the plain student row
                assert batch.suffix_ids[b, :n].tolist() == plain.suffix_ids[b][plain.suffix_mask[b].bool()].tolist()


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_curriculum_codi_position_predicts_the_first_answer_token(tiny_bases, name):
    tok = load_tokenizer(tiny_bases[name])
    ids = TokenIds.from_tokenizer(tok)
    cfg = tiny_method(drop_last_step=False)
    for k, batch in _stage_batches(tok, ids, cfg).items():
        for b, ex in enumerate(EXAMPLES):
            s, t = int(batch.student_codi_pos[b]), int(batch.teacher_codi_pos[b])
            first = int(batch.teacher_labels[b, t])  # what the teacher's CODI position predicts
            assert tok.decode([first]) == ex.answer[0]
            assert int(batch.suffix_labels[b, s]) == first, (k, b)
            # everything before it is <eot>, the written steps and the prompt (and a lone space)
            read = tok.decode(batch.suffix_ids[b, 1 : s + 1].tolist())
            written = " ".join(trace_steps(ex.steps, cfg)[k:])
            assert read.rstrip() == ((" " + written) if written else "") + " The answer is:", (k, b, read)
            assert int(batch.suffix_ids[b, s]) == int(batch.teacher_ids[b, t])  # the same token in both modes


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_curriculum_kv_targets_cover_exactly_the_first_k_steps(tiny_bases, name):
    tok = load_tokenizer(tiny_bases[name])
    ids = TokenIds.from_tokenizer(tok)
    cfg = tiny_method(drop_last_step=False)
    plain = encode_training_batch(tok, EXAMPLES, cfg, ids)
    assert torch.equal(plain.kv_cot_mask, plain.cot_mask)
    for k, batch in _stage_batches(tok, ids, cfg).items():
        assert not (batch.kv_cot_mask & ~batch.cot_mask).any()
        for b, ex in enumerate(EXAMPLES):
            kept = trace_steps(ex.steps, cfg)
            seen = tok.decode(batch.teacher_ids[b][batch.kv_cot_mask[b]].tolist())
            assert seen == " " + " ".join(kept[:k]), (k, b, seen)
            cols = batch.kv_cot_mask[b].nonzero().flatten()
            assert int(cols[0]) == int(batch.cot_mask[b].nonzero()[0])  # starts where C starts, contiguous
            assert cols.tolist() == list(range(int(cols[0]), int(cols[-1]) + 1))


def test_written_from_rejects_bad_values(tiny_bases):
    tok = load_tokenizer(tiny_bases["llama"])
    with pytest.raises(ValueError, match="written_from=-1"):
        encode_training_batch(tok, EXAMPLES, tiny_method(), TokenIds.from_tokenizer(tok), written_from=-1)
