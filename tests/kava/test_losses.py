"""The objective: zero at equality, gradients only where they belong, and it can be lowered."""

from __future__ import annotations

import pytest
import torch
from tiny import EXAMPLES, TINY_LORA, perturb_trainables, tiny_method

from kava.backbone import build_model
from kava.compression import compress_teacher_kv
from kava.losses import codi_loss, kv_loss, training_step
from kava.prompts import IGNORE, encode_training_batch


def _batch(model):
    return encode_training_batch(model.tokenizer, EXAMPLES, model.config, model.ids)


def test_distillation_terms_are_zero_when_student_equals_teacher():
    torch.manual_seed(0)
    hs = [torch.randn(4, 16) for _ in range(3)]
    for kind in ("smooth_l1", "l1", "mse"):
        assert codi_loss(hs, [h.clone() for h in hs], kind=kind).item() == 0.0
        assert codi_loss(hs, [h + 1 for h in hs], kind=kind).item() > 0.0
    k, v = torch.randn(2, 3, 2, 5, 8), torch.randn(2, 3, 2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    for std in (False, True):
        assert kv_loss(k, v, k.clone(), v.clone(), mask, kind="mse", layerwise_std=std).item() == 0.0


def test_kv_loss_ignores_masked_slots():
    k, v = torch.randn(2, 3, 2, 5, 8), torch.randn(2, 3, 2, 5, 8)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    tk, tv = k.clone(), v.clone()
    tk[0, :, :, 2:] += 100.0  # differences only in masked slots
    assert kv_loss(k, v, tk, tv, mask).item() == 0.0
    tk[1, :, :, 4] += 1.0
    assert kv_loss(k, v, tk, tv, mask).item() > 0.0


def test_total_is_the_weighted_sum(tiny_bases):
    torch.manual_seed(0)
    cfg = tiny_method(codi_weight=3.0, kv_weight=2.0, teacher_ce_weight=0.5)
    model = build_model(tiny_bases["llama"], cfg, TINY_LORA)
    out = training_step(model, _batch(model))
    parts = out.items()
    expected = parts["student_ce"] + 0.5 * parts["teacher_ce"] + 3.0 * parts["codi"] + 2.0 * parts["kv"]
    assert parts["total"] == pytest.approx(expected, rel=1e-5)
    assert all(parts[k] > 0 for k in ("student_ce", "teacher_ce", "codi", "kv"))


def test_gradients_reach_lora_projection_and_special_rows_only(tiny_bases, family):
    torch.manual_seed(0)
    # T < M: with T >= M the latents converge to the sequential ones, which no longer
    # depend on the <latent> placeholder, so its row would rightly get no gradient
    model = build_model(tiny_bases[family], tiny_method(num_iterations=1), TINY_LORA).train()
    # LoRA B starts at zero, so A would get no gradient; one nudge makes both live
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(0.01)
    training_step(model, _batch(model)).total.backward()
    named = dict(model.named_parameters())
    lora = [n for n in named if "lora_" in n]
    assert lora and all(named[n].grad is not None and named[n].grad.abs().sum() > 0 for n in lora)
    prj = [n for n in named if n.startswith("projection.")]
    assert prj and all(named[n].grad is not None for n in prj)
    rows = model.special_rows.grad
    assert rows is not None and all(rows[i].abs().sum() > 0 for i in range(3)), "<bot>, <eot>, <latent> rows"
    frozen = [
        n for n, p in named.items() if "lora_" not in n and not n.startswith("projection.") and n != "special_rows"
    ]
    assert frozen and all(not named[n].requires_grad and named[n].grad is None for n in frozen)


VARIANTS = [
    dict(objective="kava"),
    dict(objective="kava", eviction="crop"),
    dict(objective="kava", eviction="redundancy", kv_loss="mse", kv_layerwise_std=False),
    dict(objective="kava", eviction="importance", kv_key_space="pre_rope"),
    dict(objective="kava", use_projection=False, codi_loss="mse"),
    dict(objective="pccot"),
    dict(objective="codi"),
    dict(objective="cot"),
    dict(objective="nocot"),
]


def _fit(model, batch, steps: int = 15):
    """`steps` AdamW steps on one batch: the total loss before each step, and the last output."""
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        out = training_step(model, batch)
        opt.zero_grad()
        out.total.backward()
        opt.step()
        losses.append(out.total.item())
    return losses, out


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(str(x) for x in v.values()))
def test_a_few_steps_lower_the_loss(tiny_bases, variant):
    torch.manual_seed(0)
    model = build_model(tiny_bases["llama"], tiny_method(**variant), TINY_LORA).train()
    batch = _batch(model)
    losses, out = _fit(model, batch)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.9 * losses[0], losses
    parts = out.items()
    if variant["objective"] in ("cot", "nocot"):
        assert parts["student_ce"] == 0 and parts["codi"] == 0 and parts["kv"] == 0
    if variant["objective"] in ("pccot", "codi"):
        assert parts["kv"] == 0 and parts["codi"] > 0


def test_pre_rope_keys_differ_from_cached_keys(tiny_bases):
    """pre_rope must actually change what KV distillation matches (RoPE rotates keys)."""
    torch.manual_seed(0)
    a = build_model(tiny_bases["llama"], tiny_method(kv_key_space="post_rope"), TINY_LORA)
    torch.manual_seed(0)
    b = build_model(tiny_bases["llama"], tiny_method(kv_key_space="pre_rope"), TINY_LORA)
    assert training_step(a, _batch(a)).kv.item() != pytest.approx(training_step(b, _batch(b)).kv.item())


def test_nocot_teacher_has_no_trace(tiny_bases):
    torch.manual_seed(0)
    model = build_model(tiny_bases["llama"], tiny_method(objective="nocot"), TINY_LORA)
    assert not _batch(model).cot_mask.any()
    model = build_model(tiny_bases["llama"], tiny_method(objective="cot"), TINY_LORA)
    assert _batch(model).cot_mask.any()


def test_kv_sum_reduction_is_the_mean_times_layers_heads_and_dims():
    torch.manual_seed(0)
    b, layers, heads, m, d = 2, 3, 2, 4, 5
    k, v, tk, tv = (torch.randn(b, layers, heads, m, d) for _ in range(4))
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    mean = kv_loss(k, v, tk, tv, mask, kind="mse")
    total = kv_loss(k, v, tk, tv, mask, kind="mse", reduction="sum")
    torch.testing.assert_close(total, mean * layers * heads * d)


# Curriculum stages ---------------------------------------------------------------------------
def _stage_batch(model, k, examples=EXAMPLES):
    return encode_training_batch(model.tokenizer, examples, model.config, model.ids, written_from=k)


@pytest.mark.parametrize("objective", ["kava", "codi"])
def test_a_curriculum_batch_is_padding_correct_row_by_row(tiny_bases, objective):
    """Each term of a padded stage-1 batch is the right average of the rows run alone: CE terms
    weighted by supervised tokens, CODI equally, KV by the slots each row's first step fills."""
    torch.manual_seed(0)
    cfg = tiny_method(
        objective=objective, drop_last_step=False, num_iterations=1, codi_layerwise_std=False, kv_layerwise_std=False
    )
    model = build_model(tiny_bases["llama"], cfg, TINY_LORA)
    perturb_trainables(model)
    model.eval()
    m = cfg.num_latents
    with torch.no_grad():
        whole = training_step(model, _stage_batch(model, 1)).items()
        rows = []
        for ex in EXAMPLES:
            b = _stage_batch(model, 1, [ex])
            rows.append(
                (
                    training_step(model, b).items(),
                    int((b.suffix_labels != IGNORE).sum()),
                    int((b.teacher_labels != IGNORE).sum()),
                    min(int(b.kv_cot_mask.sum()), m),
                )
            )

    def avg(term, weight):
        return sum(r[0][term] * weight(r) for r in rows) / sum(weight(r) for r in rows)

    assert whole["student_ce"] == pytest.approx(avg("student_ce", lambda r: r[1]), rel=1e-5)
    assert whole["teacher_ce"] == pytest.approx(avg("teacher_ce", lambda r: r[2]), rel=1e-5)
    assert whole["codi"] == pytest.approx(avg("codi", lambda r: 1), rel=1e-4)
    if objective == "kava":
        assert whole["kv"] > 0 and whole["kv"] == pytest.approx(avg("kv", lambda r: r[3]), rel=1e-4)


def test_curriculum_kv_compression_sees_only_the_first_k_steps(tiny_bases, monkeypatch):
    import kava.losses as losses

    seen = []

    def spy(keys, values, cot_mask, attention, **kw):
        out = compress_teacher_kv(keys, values, cot_mask, attention, **kw)
        seen.append((cot_mask.clone(), out))
        return out

    monkeypatch.setattr(losses, "compress_teacher_kv", spy)
    torch.manual_seed(0)
    model = build_model(tiny_bases["llama"], tiny_method(drop_last_step=False, num_latents=6), TINY_LORA)
    for k in (1, 2, 5):
        batch = _stage_batch(model, k)
        training_step(model, batch)
        cot, comp = seen[-1]
        assert torch.equal(cot, batch.kv_cot_mask)
        n_first = batch.kv_cot_mask.sum(-1)  # (B,) tokens of the first k steps
        assert torch.equal(comp.slot_mask.sum(-1), n_first.clamp(max=6))
        for b in range(len(EXAMPLES)):
            picked = comp.indices[b][:, :, comp.slot_mask[b]]  # (Λ, Hkv, valid)
            assert batch.kv_cot_mask[b][picked].all(), (k, b)  # every kept entry lies in steps 1..k
            if k >= len(EXAMPLES[b].steps):
                assert torch.equal(batch.kv_cot_mask[b], batch.cot_mask[b])


@pytest.mark.parametrize("objective", ["kava", "pccot", "codi"])
def test_a_few_curriculum_steps_lower_the_loss(tiny_bases, objective):
    torch.manual_seed(0)
    model = build_model(tiny_bases["llama"], tiny_method(objective=objective, drop_last_step=False), TINY_LORA).train()
    batch = _stage_batch(model, 1)
    losses, out = _fit(model, batch)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.9 * losses[0], losses
    assert out.items()["student_ce"] > 0 and out.items()["codi"] > 0


# Step supervision (SIM-CoT-style) ------------------------------------------------------------
def test_step_slots_end_each_equal_group_and_the_last_step_on_the_last_slot():
    from kava.prompts import step_slots

    assert step_slots(3, 12) == [3, 7, 11]
    assert step_slots(4, 12) == [2, 5, 8, 11]
    assert step_slots(1, 12) == [11]
    assert step_slots(5, 2) == [0, 0, 1, 1, 1]  # more steps than slots: none falls outside


def test_step_rows_decode_each_written_step_from_its_slot(tiny_bases):
    cfg = tiny_method(drop_last_step=False, step_weight=1.0)
    model = build_model(tiny_bases["llama"], cfg, TINY_LORA)
    sb = _batch(model).steps
    tok = model.tokenizer
    want = [(b, s.strip()) for b, ex in enumerate(EXAMPLES) for s in ex.steps]
    assert [(int(r), tok.decode(ids[m[1:].bool()]).strip()) for r, ids, m in zip(sb.row, sb.ids, sb.mask)] == want
    # position i of (z, C_k) predicts step token i; the last real position predicts nothing
    for ids, mask, labels in zip(sb.ids, sb.mask, sb.labels):
        n = int(mask.sum()) - 1
        assert labels[:n].tolist() == ids[:n].tolist() and (labels[n:] == IGNORE).all()
    assert _batch(build_model(tiny_bases["llama"], tiny_method(), TINY_LORA)).steps is None


def test_step_loss_is_weighted_in_and_reaches_the_latents(tiny_bases):
    torch.manual_seed(0)
    cfg = tiny_method(drop_last_step=False, num_iterations=1, step_weight=0.5)
    model = build_model(tiny_bases["llama"], cfg, TINY_LORA).train()
    perturb_trainables(model)
    out = training_step(model, _batch(model))
    parts = out.items()
    expected = parts["student_ce"] + parts["teacher_ce"] + parts["codi"] + parts["kv"] + 0.5 * parts["step_ce"]
    assert parts["total"] == pytest.approx(expected, rel=1e-5) and parts["step_ce"] > 0
    # the term depends on the latents: its gradient reaches the <latent> row through the Jacobi passes
    model.zero_grad()
    out.weighted["step_ce"].backward()
    grad = model.special_rows.grad
    assert grad is not None and grad[2].abs().sum() > 0
    plain = build_model(tiny_bases["llama"], tiny_method(drop_last_step=False), TINY_LORA)
    assert "step_ce" not in training_step(plain, _batch(plain)).items()
