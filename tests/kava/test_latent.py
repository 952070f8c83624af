"""Jacobi = sequential when T >= M, and left padding never changes a row's result."""

from __future__ import annotations

import pytest
import torch
from tiny import EXAMPLES, make_model

from kava.generate import solve_batch
from kava.latent import jacobi_latents, prefill, run_latents, sequential_latents
from kava.prompts import encode_prefixes, prompt_ids

QUESTIONS = [e.question for e in EXAMPLES]


def _latents(model, questions, *, sequential=False, t=None):
    batch = encode_prefixes(model.tokenizer, questions, model.ids, with_bot=True)
    with torch.no_grad():
        pre = prefill(model, batch)
        m = model.config.num_latents
        lat = sequential_latents(model, pre, m) if sequential else jacobi_latents(model, pre, m, t)
    lp = pre.mask.shape[1]
    slot_k = torch.stack([la.keys[:, :, lp : lp + m] for la in lat.cache.layers], 1)  # (B, Λ, H, M, d)
    return lat, slot_k


@pytest.mark.parametrize("extra", [0, 2])
def test_jacobi_with_t_ge_m_equals_sequential(tiny_bases, family, extra):
    model = make_model(tiny_bases[family])
    m = model.config.num_latents
    seq, seq_k = _latents(model, QUESTIONS, sequential=True)
    jac, jac_k = _latents(model, QUESTIONS, t=m + extra)
    assert seq.passes == m and jac.passes == m + extra + 1
    torch.testing.assert_close(jac.inputs, seq.inputs, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(jac_k, seq_k, atol=1e-5, rtol=1e-4)


def test_jacobi_with_t_lt_m_differs_from_sequential(tiny_bases):
    """Guards the test above: too few iterations must leave the last slot unconverged."""
    model = make_model(tiny_bases["llama"])
    seq, _ = _latents(model, QUESTIONS, sequential=True)
    jac, _ = _latents(model, QUESTIONS, t=1)
    assert not torch.allclose(jac.inputs[:, -1], seq.inputs[:, -1], atol=1e-4)
    torch.testing.assert_close(jac.inputs[:, 0], seq.inputs[:, 0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("sequential,t", [(False, 0), (False, 1), (False, 3), (True, 0)])
def test_fused_passes_equal_separate_passes(tiny_bases, family, sequential, t):
    """Init pass inside prefill and `<eot> P` inside the last latent pass (what inference
    runs) give the same latents, cache and first-answer logits as separate passes."""
    model = make_model(tiny_bases[family])
    m = model.config.num_latents
    batch = encode_prefixes(model.tokenizer, QUESTIONS, model.ids, with_bot=True)
    ids = torch.tensor([[model.ids.eot] + prompt_ids(model.tokenizer, model.config)])
    suffix = model.embed(ids).expand(len(QUESTIONS), -1, -1)
    kw = dict(num_latents=m, num_iterations=t, sequential=sequential)
    with torch.no_grad():
        pre = prefill(model, batch)
        sep = run_latents(model, pre, **kw)
        s = ids.shape[1]
        mask = torch.cat([sep.mask, sep.mask.new_ones((len(QUESTIONS), s))], 1)
        out = model(suffix, mask, sep.lengths[:, None] + torch.arange(s)[None], sep.cache)
        fused_pre = prefill(model, batch, init_slots=0 if sequential else m)
        fused = run_latents(model, fused_pre, **kw, suffix=suffix)
    assert fused_pre.kv[0][0].shape == pre.kv[0][0].shape  # only the prompt's KV is kept
    torch.testing.assert_close(fused_pre.last_hidden, pre.last_hidden, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fused.inputs, sep.inputs, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fused.suffix_logits, out.logits[:, -1], atol=1e-4, rtol=1e-4)
    assert torch.equal(fused.mask, mask) and torch.equal(fused.lengths, sep.lengths + s)
    for a, b in zip(fused.cache.layers, out.cache.layers):
        torch.testing.assert_close(a.keys, b.keys, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(a.values, b.values, atol=1e-5, rtol=1e-4)
    saved = 0 if sequential or t == 0 else 1
    assert fused.passes == sep.passes - saved


def test_left_padded_latents_equal_single_rows(tiny_bases, family):
    model = make_model(tiny_bases[family])
    batch, batch_k = _latents(model, QUESTIONS, t=2)
    lengths = {len(model.tokenizer(q)["input_ids"]) for q in QUESTIONS}
    assert len(lengths) > 1, "the batch must actually need padding"
    for i, q in enumerate(QUESTIONS):
        alone, alone_k = _latents(model, [q], t=2)
        torch.testing.assert_close(batch.inputs[i], alone.inputs[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(batch_k[i], alone_k[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("mode,sequential", [("latent", False), ("latent", True), ("cot", False)])
def test_batched_answers_equal_one_by_one(tiny_bases, family, mode, sequential):
    model = make_model(tiny_bases[family])
    together = solve_batch(model, QUESTIONS, mode=mode, sequential=sequential, max_new_tokens=8).results
    for q, got in zip(QUESTIONS, together):
        alone = solve_batch(model, [q], mode=mode, sequential=sequential, max_new_tokens=8).results[0]
        assert got.text == alone.text
        assert got.generated_tokens == alone.generated_tokens
        assert got.forward_passes == alone.forward_passes
        assert got.kv_cache_bytes == alone.kv_cache_bytes


def test_counts_and_per_row_limits(tiny_bases):
    model = make_model(tiny_bases["llama"])
    m, t = model.config.num_latents, model.config.num_iterations
    out = solve_batch(model, QUESTIONS[:2], max_new_tokens=[1, 6], return_latents=True)
    first, second = out.results
    assert first.generated_tokens == 1 and first.finish_reason in ("length", "stop")
    assert second.generated_tokens <= 6
    # prefill (+ init) + T iterations (the last carries `<eot> P`), then one pass per fed-back token
    assert first.forward_passes == 1 + t
    assert second.forward_passes == 1 + t + (second.generated_tokens - 1)
    assert first.latent_tokens == m and len(first.latent_nearest_tokens) == m
    assert out.stats.passes["latent"] == t
    assert out.stats.peak_kv_bytes >= first.kv_cache_bytes + second.kv_cache_bytes


def test_method_tokens_are_never_generated(tiny_bases):
    model = make_model(tiny_bases["llama"])
    with torch.no_grad():  # make <bot> the most likely token everywhere
        model.lm.get_output_embeddings().weight[model.ids.bot] += 100.0
    out = solve_batch(model, QUESTIONS[:1], mode="cot", max_new_tokens=4).results[0]
    assert "<bot>" not in model.tokenizer.decode(model.tokenizer(out.text)["input_ids"])
    assert out.generated_tokens > 0
