"""The inference fast path equals the reference path: same tokens, same answers, same costs.

Reference = `kava.reference` (peft LoRA unmerged, HF forward, DynamicCache, left padding);
fast = `kava.fastlm` + `kava.running` (merged LoRA, SDPA over a static cache, packed rows).
Every family, every latent schedule, padded batches; then what only the running batch can
do — rows joining mid-flight, mixed modes, leaving — against each row solved alone.
"""

from __future__ import annotations

import pytest
import torch
from tiny import EXAMPLES, make_model

from kava import fastlm
from kava.fastlm import KVCache, Plan, Staging, fast_lm, forget_fast, forward
from kava.generate import solve_batch
from kava.prompts import encode_prefixes, positions
from kava.running import Ask, Running

QUESTIONS = [e.question for e in EXAMPLES]
LIMITS = [7, 3, 8, 5]  # per-row limits: rows leave the batch at different passes


def _same(fast, ref):
    assert [r.text for r in fast] == [r.text for r in ref]
    for f, r in zip(fast, ref):
        assert (f.answer, f.finish_reason, f.generated_tokens) == (r.answer, r.finish_reason, r.generated_tokens)
        assert (f.prompt_tokens, f.latent_tokens) == (r.prompt_tokens, r.latent_tokens)
        assert f.forward_passes == r.forward_passes
        assert f.kv_cache_bytes == r.kv_cache_bytes
        assert f.latent_nearest_tokens == r.latent_nearest_tokens


@pytest.mark.parametrize(
    "mode,t,sequential",
    [("latent", None, False), ("latent", 0, False), ("latent", 1, False), ("latent", 5, False), ("latent", None, True),
     ("cot", None, False)],
)  # fmt: skip
def test_fast_equals_reference(tiny_bases, family, mode, t, sequential):
    model = make_model(tiny_bases[family])
    kw = dict(mode=mode, num_iterations=t, sequential=sequential, max_new_tokens=LIMITS)
    kw["return_latents"] = mode == "latent"
    fast = solve_batch(model, QUESTIONS, **kw)
    ref = solve_batch(model, QUESTIONS, fast=False, **kw)
    _same(fast.results, ref.results)
    assert fast.stats.passes == ref.stats.passes
    assert fast.stats.peak_kv_bytes >= sum(r.kv_cache_bytes for r in fast.results)


def test_one_pass_equals_the_hf_forward(tiny_bases, family):
    """Rows packed unpadded at different cache offsets give the reference hidden states."""
    model = make_model(tiny_bases[family])
    batch = encode_prefixes(model.tokenizer, QUESTIONS, model.ids, with_bot=True)
    with torch.no_grad():
        ref = model(model.embed(batch.input_ids), batch.attention_mask, positions(batch.attention_mask))
        lm = fast_lm(model)
        cache = KVCache(lm, len(QUESTIONS), 64)
        rows = [ids[m.bool()] for ids, m in zip(batch.input_ids, batch.attention_mask)]
        # every row split in two passes: its first 3 tokens, then the rest
        heads, tails = torch.cat([r[:3] for r in rows]), torch.cat([r[3:] for r in rows])
        first = forward(lm, cache, lm.embed(heads), Plan.build([0] * 4, [3] * 4, lm.device))
        counts = [len(r) - 3 for r in rows]
        h = lm.final_norm(forward(lm, cache, lm.embed(tails), Plan.build([3] * 4, counts, lm.device)))
    assert first.shape == (12, model.hidden_size)
    ends = torch.tensor(counts).cumsum(0) - 1
    torch.testing.assert_close(h[ends], ref.hidden[:, -1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(lm.logits(h[ends]), ref.logits[:, -1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("graphs", [False, True])
def test_rows_join_midway_and_mix_modes(tiny_bases, family, graphs):
    """Iteration-level batching: rows of both modes and different T join while others
    decode, one leaves early; each row gets exactly what it gets alone. With `graphs` the
    passes where every row adds as many tokens run at fixed shapes (`kava.graphs`)."""
    model = make_model(tiny_bases[family])
    asks = [
        Ask(QUESTIONS[0], "latent", max_new_tokens=6),
        Ask(QUESTIONS[1], "cot", max_new_tokens=9),
        Ask(QUESTIONS[2], "latent", max_new_tokens=5, num_iterations=1),
        Ask(QUESTIONS[3], "cot", max_new_tokens=4),
        Ask(QUESTIONS[2], "latent", max_new_tokens=4, sequential=True, return_latents=True),
    ]
    running = Running(model, rows=2, length=8, graphs=graphs)  # too small on purpose: joining grows it
    joins = {0: 0, 1: 1, 2: 2, 4: 3, 5: 4}  # pass number -> ask joining before it
    rows, done = {}, {}
    for n in range(40):
        if n in joins:
            i = joins[n]
            rows[i] = running.join(asks[i], tag=i)
        if n == 3:  # cancelled while it decodes
            running.leave(rows[1], "cancelled")
            done[1] = running.result(rows[1])
        if not running:
            break
        out = running.step()
        done.update({r.tag: running.result(r) for r in out.finished})
    assert sorted(done) == list(range(len(asks)))
    assert done[1].finish_reason == "cancelled" and done[1].generated_tokens < 9
    assert not graphs or running.graphs.passes  # some passes did run at fixed shapes
    for i, ask in enumerate(asks):
        if i == 1:
            continue
        kw = dict(mode=ask.mode, num_iterations=ask.num_iterations, sequential=ask.sequential)
        alone = solve_batch(model, [ask.question], max_new_tokens=ask.max_new_tokens, fast=False,
                            return_latents=ask.return_latents, **kw).results  # fmt: skip
        _same([done[i]], alone)


def test_streamed_text_adds_up_to_the_answer(tiny_bases):
    model = make_model(tiny_bases["llama"])
    running = Running(model)
    row = running.join(Ask(QUESTIONS[0], "cot", max_new_tokens=12, stream=True))
    pieces = []
    while running:
        pieces += [t.text for t in running.step().tokens if t.row is row]
    result = running.result(row)
    assert len(pieces) == result.generated_tokens
    assert "".join(pieces).strip() == result.text


def test_fast_weights_follow_in_place_updates(tiny_bases):
    """An optimizer step between evaluations changes the weights in place; the merged copy
    must be rebuilt, not reused."""
    model = make_model(tiny_bases["llama"])
    before = fast_lm(model)
    assert fast_lm(model) is before
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "lora_B" in n).add_(0.5)
    assert fast_lm(model) is not before
    _same(solve_batch(model, QUESTIONS, max_new_tokens=5).results,
          solve_batch(model, QUESTIONS, max_new_tokens=5, fast=False).results)  # fmt: skip


def test_forget_fast_picks_up_a_replaced_weight(tiny_bases):
    """A weight replaced by a new Parameter object is not watched; `forget_fast` rebuilds
    the fast form from the model's current weights."""
    model = make_model(tiny_bases["llama"])
    before = fast_lm(model)
    model.special_rows = torch.nn.Parameter(model.special_rows.detach() + 1.0)
    forget_fast(model)
    after = fast_lm(model)
    assert after is not before
    assert torch.equal(after.special_rows, model.special_rows)
    assert fast_lm(model) is after


def test_unknown_family_runs_the_reference_path(tiny_bases, monkeypatch):
    model = make_model(tiny_bases["gpt2"])
    monkeypatch.setattr(fastlm, "FAMILIES", {"llama": fastlm.FAMILIES["llama"]})
    with pytest.raises(fastlm.FastPathUnsupported, match="gpt2"):
        fastlm.FastLM(model)
    out = solve_batch(model, QUESTIONS, max_new_tokens=4)
    assert out.stats.peak_kv_bytes > 0 and all(r.generated_tokens for r in out.results)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fast_equals_reference_on_cuda(tiny_bases, family):
    model = make_model(tiny_bases[family]).to("cuda")
    for mode in ("latent", "cot"):
        fast = solve_batch(model, QUESTIONS, mode=mode, max_new_tokens=LIMITS)
        _same(fast.results, solve_batch(model, QUESTIONS, mode=mode, max_new_tokens=LIMITS, fast=False).results)


CUDA = pytest.param(
    "cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
)


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_bf16_fast_pass_tracks_the_hf_forward(tiny_bases, family, device):
    """bf16 rounds merged and unmerged LoRA differently, so tokens may part ways; one pass
    must still agree to bf16 precision, and a solve must run with consistent counts. On CPU
    the fast path's attention runs in float32 (faster there), the HF forward's in bf16."""
    model = make_model(tiny_bases[family]).to(device=device, dtype=torch.bfloat16)
    batch = encode_prefixes(model.tokenizer, QUESTIONS, model.ids, with_bot=True).to(device)
    with torch.no_grad():
        ref = model(model.embed(batch.input_ids), batch.attention_mask, positions(batch.attention_mask))
        lm = fast_lm(model)
        rows = [ids[m.bool()] for ids, m in zip(batch.input_ids, batch.attention_mask)]
        counts = [len(r) for r in rows]
        plan = Plan.build([0] * 4, counts, lm.device)
        h = lm.final_norm(forward(lm, KVCache(lm, 4, 64), lm.embed(torch.cat(rows)), plan))
    ends = torch.tensor(counts, device=device).cumsum(0) - 1
    torch.testing.assert_close(h[ends].float(), ref.hidden[:, -1].float(), atol=0.1, rtol=0.05)
    t = model.config.num_iterations
    for r in solve_batch(model, QUESTIONS, max_new_tokens=LIMITS).results:
        assert 1 <= r.generated_tokens and r.forward_passes == 1 + t + r.generated_tokens - 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_staging_sends_every_list_intact_within_a_pass_and_across_a_grow():
    staging = Staging(torch.device("cuda"), size=4)
    for _ in range(2):  # a second pass reuses the buffer from offset 0
        staging.reset()
        first = staging.send([[1, 2], [3], []])
        second = staging.send([[4, 5, 6], [7, 8]])  # past the 4 slots: grows while `first` is in flight
        assert [t.tolist() for t in first + second] == [[1, 2], [3], [], [4, 5, 6], [7, 8]]
        assert all(t.device.type == "cuda" and t.dtype == torch.long for t in first + second)
