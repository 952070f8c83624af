"""The KaVa objective (METHOD.md §4) and one function for a whole training step's forward.

L = w_s CE_student + w_t CE_teacher + a1 L_CODI + a2 L_KV [+ a3 L_step]. Owns the terms and the
teacher/student passes that feed them; the student's latent phase is the same code the
server runs (`kava.latent`). A curriculum batch (`encode_training_batch(written_from=k)`)
runs through the same step: its student suffix carries the still-written steps and its
`kv_cot_mask` the replaced ones. Does not own optimisation, data or logging.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from kava.backbone import KavaModel
from kava.compression import answer_attention, compress_teacher_kv
from kava.keys import capture_pre_rope_keys
from kava.latent import cache_kv, prefill, prefill_on_question, run_latents
from kava.prompts import IGNORE, TrainBatch, positions

_ELEMENTWISE = {
    "smooth_l1": lambda a, b: F.smooth_l1_loss(a, b, reduction="none"),
    "l1": lambda a, b: (a - b).abs(),
    "mse": lambda a, b: (a - b).pow(2),
}


@dataclass
class LossOutput:
    total: torch.Tensor  # scalar with grad
    student_ce: torch.Tensor
    teacher_ce: torch.Tensor
    codi: torch.Tensor
    kv: torch.Tensor
    step_ce: torch.Tensor | None = None  # step supervision CE, when the config uses it
    weighted: dict[str, torch.Tensor] = field(default_factory=dict)  # each term x its weight, with grad

    def items(self) -> dict[str, float]:
        names = ("total", "student_ce", "teacher_ce", "codi", "kv") + (("step_ce",) if self.step_ce is not None else ())
        return {k: float(getattr(self, k).detach()) for k in names}


# Terms -----------------------------------------------------------------------------------
def ce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token mean CE; `labels` (B, L) are aligned with `logits` (B, L, V) (next token)."""
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE)


def codi_loss(
    student: Sequence[torch.Tensor],
    teacher: Sequence[torch.Tensor],
    *,
    kind: str = "smooth_l1",
    layerwise_std: bool = True,
) -> torch.Tensor:
    """Mean over layers of D(student_l, sg(teacher_l)) [/ std(teacher_l)]; each (B, D)."""
    fn = _ELEMENTWISE[kind]
    per_layer = []
    for s, t in zip(student, teacher, strict=True):
        t = t.detach().float()
        loss = fn(s.float(), t).mean()
        if layerwise_std:
            loss = loss / t.std().clamp_min(1e-6)
        per_layer.append(loss)
    return torch.stack(per_layer).mean()


def kv_loss(
    student_k: torch.Tensor,
    student_v: torch.Tensor,
    teacher_k: torch.Tensor,
    teacher_v: torch.Tensor,
    slot_mask: torch.Tensor,
    *,
    kind: str = "smooth_l1",
    layerwise_std: bool = False,
    reduction: str = "mean",
) -> torch.Tensor:
    """(1/2)(D(K_s, sg K_t) + D(V_s, sg V_t)), reduced over layers, heads, valid slots and dims.

    All K/V are (B, Λ, Hkv, M, d); `slot_mask` (B, M) drops slots the teacher could not
    fill (N_C < M). `reduction="mean"` averages every element (the default the published
    weights fit); `"sum"` is the paper's formula: summed over layers, heads and head dims,
    averaged over valid slots (Λ·Hkv·d times larger). With `layerwise_std` each layer's
    residual is divided by that layer's teacher std."""
    assert reduction in ("mean", "sum"), reduction
    fn = _ELEMENTWISE[kind]
    w = slot_mask[:, None, None, :, None].float()  # (B, 1, 1, M, 1)
    count = w.sum() if reduction == "sum" else w.sum() * student_k.shape[1] * student_k.shape[2] * student_k.shape[4]
    count = count.clamp_min(1.0)

    def one(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s, t = s.float(), t.detach().float()
        if layerwise_std:
            valid = w.expand_as(t).bool()
            std = torch.stack(
                [t[:, i][valid[:, i]].std() if valid[:, i].sum() > 1 else t.new_tensor(1.0) for i in range(t.shape[1])]
            ).clamp_min(1e-6)  # (Λ,)
            scale = std[None, :, None, None, None]
            s, t = s / scale, t / scale
        return (fn(s, t) * w).sum() / count

    return 0.5 * (one(student_k, teacher_k) + one(student_v, teacher_v))


def _stack_kv(kv: Sequence[tuple[torch.Tensor, torch.Tensor]], sl: slice) -> tuple[torch.Tensor, torch.Tensor]:
    k = torch.stack([k[:, :, sl] for k, _ in kv], dim=1)  # (B, Λ, Hkv, N, d)
    v = torch.stack([v[:, :, sl] for _, v in kv], dim=1)
    return k, v


# The step ---------------------------------------------------------------------------------
def training_step(model: KavaModel, batch: TrainBatch, *, share_question: bool = True) -> LossOutput:
    """Forward for one batch under the model's MethodConfig; returns total and each term.
    `share_question=False` runs the student's prefill from scratch (same loss and gradients,
    one more pass over Q: the form the tests hold the shared one to)."""
    cfg = model.config
    zero = torch.zeros((), device=model.device)
    need_kv, need_codi = cfg.uses_kv_loss, cfg.uses_codi_loss
    need_attn = need_kv and cfg.eviction in ("rkv", "importance")
    pre_rope = need_kv and cfg.kv_key_space == "pre_rope"

    # 1. Teacher: Q C P A <eos>, right padded
    with capture_pre_rope_keys(model, enabled=pre_rope) as t_keys:
        t_out = model(
            model.embed(batch.teacher_ids),
            batch.teacher_mask,
            positions(batch.teacher_mask),
            all_hidden=need_codi,
            attentions=need_attn,
        )
    teacher_ce = ce_loss(t_out.logits, batch.teacher_labels)
    if not cfg.uses_latents:
        return LossOutput(cfg.teacher_ce_weight * teacher_ce, zero, teacher_ce.detach(), zero, zero)

    # 2. Student: Q <bot> -> latents -> <eot> P A <eos>, same code as inference. The teacher
    #    pass already holds Q's K/V: only <bot> and the init slots run (`prefill_on_question`)
    m = cfg.num_latents
    if share_question:
        fuse_init = not cfg.sequential and cfg.num_iterations > 0  # as inference fuses it
        pre = prefill_on_question(model, batch.prefix, cache_kv(t_out.cache), init_slots=m if fuse_init else 0)
    else:
        pre = prefill(model, batch.prefix)
    lp = pre.mask.shape[1]
    with capture_pre_rope_keys(model, enabled=pre_rope) as s_keys:
        lat = run_latents(model, pre, num_latents=m, num_iterations=cfg.num_iterations, sequential=cfg.sequential)
    # the latent slots' K/V, taken before the suffix pass extends the cache
    if pre_rope:
        student_kv = s_keys.replace_keys(lat.cache, last=m)
    else:
        student_kv = [(la.keys[:, :, lp : lp + m], la.values[:, :, lp : lp + m]) for la in lat.cache.layers]
    s_mask = torch.cat([lat.mask, batch.suffix_mask], dim=1)  # (B, Lp + M + La)
    s_pos = lat.lengths[:, None] + positions(batch.suffix_mask)  # (B, La)
    s_out = model(model.embed(batch.suffix_ids), s_mask, s_pos, lat.cache, all_hidden=need_codi)
    student_ce = ce_loss(s_out.logits, batch.suffix_labels)

    # 3. CODI: every layer's hidden state at the position that predicts the first answer token
    codi = zero
    if need_codi:
        rows = torch.arange(batch.teacher_ids.shape[0], device=model.device)
        t_h = [h[rows, batch.teacher_codi_pos] for h in t_out.hidden_states]  # per layer (B, D)
        s_h = [h[rows, batch.student_codi_pos] for h in s_out.hidden_states]
        codi = codi_loss(s_h, t_h, kind=cfg.codi_loss, layerwise_std=cfg.codi_layerwise_std)

    # 4. KV: last-iteration latent K/V vs the R-KV-compressed teacher CoT K/V (under a curriculum,
    #    the CoT of the steps the latents replace: `kv_cot_mask`)
    kv = zero
    if need_kv:
        with torch.no_grad():
            t_kv = t_keys.replace_keys(t_out.cache) if pre_rope else cache_kv(t_out.cache)
            tk, tv = _stack_kv(t_kv, slice(None))
            attn = answer_attention(t_out.attentions, batch.answer_mask) if need_attn else None
            comp = compress_teacher_kv(
                tk, tv, batch.kv_cot_mask, attn, budget=m, lam=cfg.eviction_lambda, variant=cfg.eviction
            )
        sk, sv = _stack_kv(student_kv, slice(None))  # (B, Λ, Hkv, M, d)
        kv = kv_loss(
            sk,
            sv,
            comp.keys,
            comp.values,
            comp.slot_mask,
            kind=cfg.kv_loss,
            layerwise_std=cfg.kv_layerwise_std,
            reduction=cfg.kv_reduction,
        )

    # 5. Step supervision (SIM-CoT-style, off by default): latent slot j_k, projected to an
    #    input vector and seen alone, decodes written step k (`kava.prompts.step_slots`)
    step = None
    if cfg.uses_step_loss and batch.steps is not None:
        sb = batch.steps
        z = model.project(lat.hidden[sb.row, sb.slot])  # (K, D)
        x = torch.cat([z[:, None], model.embed(sb.ids).to(z.dtype)], dim=1)  # (K, 1 + Ls, D)
        step = ce_loss(model(x, sb.mask, positions(sb.mask)).logits, sb.labels)

    weighted = {
        "student_ce": cfg.student_ce_weight * student_ce,
        "teacher_ce": cfg.teacher_ce_weight * teacher_ce,
        "codi": cfg.codi_weight * codi,
        "kv": cfg.kv_weight * kv,
    }
    if step is not None:
        weighted["step_ce"] = cfg.step_weight * step
    total = sum(weighted.values())
    return LossOutput(
        total, student_ce.detach(), teacher_ce.detach(), codi.detach(), kv.detach(),
        step.detach() if step is not None else None, weighted,
    )  # fmt: skip
