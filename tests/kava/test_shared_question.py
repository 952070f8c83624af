"""The student's prefill taken from the teacher's pass: the same prefix, loss and gradients as
running `Q <bot>` again, for every family and every objective that has latents."""

from __future__ import annotations

import pytest
import torch
from tiny import EXAMPLES, TINY_LORA, perturb_trainables, tiny_method

from kava.backbone import build_model
from kava.latent import prefill, prefill_on_question
from kava.losses import training_step
from kava.prompts import encode_training_batch, positions


def _model(base, **method):
    torch.manual_seed(0)
    model = build_model(base, tiny_method(**method), TINY_LORA)
    perturb_trainables(model)
    return model.eval()


def test_the_prefix_equals_a_fresh_prefill_on_a_padded_batch(tiny_bases, family):
    model = _model(tiny_bases[family])
    batch = encode_training_batch(model.tokenizer, EXAMPLES, model.config, model.ids)
    lengths = batch.prefix.lengths
    assert len(set(lengths.tolist())) > 1, "the examples must pad the prefix"
    m = model.config.num_latents
    with torch.no_grad():
        teacher = model(model.embed(batch.teacher_ids), batch.teacher_mask, positions(batch.teacher_mask))
        kv = [(la.keys, la.values) for la in teacher.cache.layers]
        shared = prefill_on_question(model, batch.prefix, kv, init_slots=m)
        fresh = prefill(model, batch.prefix, init_slots=m)
    torch.testing.assert_close(shared.last_hidden, fresh.last_hidden, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(shared.last_logits, fresh.last_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(shared.init_hidden, fresh.init_hidden, rtol=1e-4, atol=1e-5)
    assert torch.equal(shared.mask, fresh.mask) and torch.equal(shared.lengths, fresh.lengths)
    real = batch.prefix.attention_mask.bool()  # pad columns hold different (masked) values
    for (ks, vs), (kf, vf) in zip(shared.kv, fresh.kv, strict=True):
        assert ks.shape == kf.shape
        torch.testing.assert_close(ks.transpose(1, 2)[real], kf.transpose(1, 2)[real], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(vs.transpose(1, 2)[real], vf.transpose(1, 2)[real], rtol=1e-4, atol=1e-5)


VARIANTS = {
    "kava": {},
    "pre-rope keys": {"kv_key_space": "pre_rope"},
    "crop": {"eviction": "crop"},
    "T=0": {"num_iterations": 0},
    "pccot": {"objective": "pccot"},
    "codi (sequential)": {"objective": "codi"},
    "step loss": {"step_weight": 1.0, "drop_last_step": False},
}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("written_from", [None, 1])
def test_loss_and_gradients_are_those_of_a_separate_prefill(tiny_bases, family, variant, written_from):
    if written_from is not None and variant == "step loss":
        pytest.skip("step rows are not built for curriculum batches")
    model = _model(tiny_bases[family], **VARIANTS[variant])
    batch = encode_training_batch(model.tokenizer, EXAMPLES, model.config, model.ids, written_from=written_from)
    params = [p for p in model.parameters() if p.requires_grad]
    runs = []
    for share in (False, True):
        out = training_step(model, batch, share_question=share)
        grads = torch.autograd.grad(out.total, params, allow_unused=True)
        runs.append((out.items(), grads))
    (separate, g_sep), (shared, g_sh) = runs
    assert shared == pytest.approx(separate, rel=1e-4, abs=1e-6)
    assert any(g is not None and g.abs().sum() > 0 for g in g_sh)
    for a, b in zip(g_sep, g_sh, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-6)
