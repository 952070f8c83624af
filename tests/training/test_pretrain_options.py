"""Backbone pretraining options: iCoT-style internalization (`internalized`) and
continuing a saved backbone (`pretrain_backbone(init=...)`)."""

from pathlib import Path

import torch
from transformers import LlamaForCausalLM

from kava.prompts import Example
from training.data.task import mixed_styles
from training.pretrain import BackboneShape, internalized, pretrain_backbone
from training.trainer import OptimSettings

EX = Example("q", ("<<1+2=3>>", "<<3*2=6>>", "<<6-1=5>>", "<<5+5=10>>"), "10")


def test_drops_a_prefix_of_the_steps_and_keeps_the_answer():
    seen = set()
    for pos in range(400):
        out = internalized(EX, pos, share=1.0, seed=0)
        k = len(EX.steps) - len(out.steps)
        assert 1 <= k <= len(EX.steps) - 1, "at least one step dropped, at least one written"
        assert out.steps == EX.steps[k:] and out.answer == EX.answer and out.question == EX.question
        seen.add(k)
    assert seen == {1, 2, 3}


def test_share_is_the_rate_and_positions_are_deterministic():
    dropped = sum(internalized(EX, pos, 0.3, seed=1) != EX for pos in range(2000))
    assert 500 < dropped < 700
    assert [internalized(EX, p, 0.5, 7) for p in range(50)] == [internalized(EX, p, 0.5, 7) for p in range(50)]
    assert [internalized(EX, p, 0.5, 7) for p in range(50)] != [internalized(EX, p, 0.5, 8) for p in range(50)]


def test_off_and_single_step_sequences_stay_whole():
    assert all(internalized(EX, p, 0.0, 0) == EX for p in range(100))
    one = Example("q", ("<<1+2=3>>",), "3")
    assert all(internalized(one, p, 1.0, 0) == one for p in range(100))


def test_init_continues_a_saved_backbone_instead_of_a_fresh_one(tmp_path: Path):
    tiny = BackboneShape(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
    data = mixed_styles(16)
    frozen = OptimSettings(lr=1e-9, weight_decay=0.0, max_steps=1, batch_size=4, save_every=1, log_every=1)
    first = pretrain_backbone(data, tmp_path / "a", shape=tiny, settings=frozen)
    again = pretrain_backbone(data, tmp_path / "b", settings=frozen, init=first, internalize=0.5)
    fresh = pretrain_backbone(data, tmp_path / "c", shape=tiny, settings=frozen, vocab_size=300)
    w = lambda d: LlamaForCausalLM.from_pretrained(str(d)).model.embed_tokens.weight  # noqa: E731
    assert torch.allclose(w(first), w(again), atol=1e-6), "a 1e-9 step: the continued backbone is the saved one"
    assert w(first).shape != w(fresh).shape
    assert (tmp_path / "b" / "tokenizer.json").read_text() == (tmp_path / "a" / "tokenizer.json").read_text()
