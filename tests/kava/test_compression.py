"""Tests for kava.compression: which teacher cache entries survive, in what order, and with what mask."""

from __future__ import annotations

import pytest
import torch

from kava.compression import CompressedKV, answer_attention, compress_teacher_kv
from kava.config import EVICTIONS

VARIANTS = EVICTIONS  # every eviction a MethodConfig accepts


def _cot_mask(n: int, spans: list[tuple[int, int]]) -> torch.Tensor:
    """One row per (start, length) CoT span; everything else is padding, question or answer."""
    mask = torch.zeros(len(spans), n, dtype=torch.bool)  # (B, N)
    for b, (start, length) in enumerate(spans):
        mask[b, start : start + length] = True
    return mask


def _cot_positions(cot: torch.Tensor, b: int) -> list[int]:
    return cot[b].nonzero().flatten().tolist()


def _adversarial_inputs(
    cot: torch.Tensor, layers: int = 2, hkv: int = 2, hq: int = 4, d: int = 8, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random cache where non-CoT positions get most of the attention and mutually orthogonal keys."""
    g = torch.Generator().manual_seed(seed)
    B, N = cot.shape
    keys = torch.randn(B, layers, hkv, N, d, generator=g)  # (B, Λ, Hkv, N, d)
    keys[:, :, :, :, 0] += 3.0  # CoT keys share a direction, so they look redundant
    eye = torch.eye(d)
    for b in range(B):
        for i, n in enumerate((~cot[b]).nonzero().flatten().tolist()):
            keys[b, :, :, n] = 10.0 * eye[i % d]  # distinctive non-CoT keys
    values = torch.randn(B, layers, hkv, N, d, generator=g)  # (B, Λ, Hkv, N, d)
    logits = torch.randn(B, layers, hq, N, generator=g) + 8.0 * (~cot)[:, None, None, :]
    attention = torch.softmax(logits, dim=-1)  # (B, Λ, Hq, N) mass mostly outside the CoT
    return keys, values, attention


def _run(variant: str, keys, values, cot, attention, budget: int, lam: float = 0.1) -> CompressedKV:
    return compress_teacher_kv(keys, values, cot, attention, budget=budget, lam=lam, variant=variant)


@pytest.mark.parametrize("variant", VARIANTS)
def test_selects_exactly_m_sorted_cot_positions(variant: str) -> None:
    N, M = 24, 4
    cot = _cot_mask(N, [(3, 10), (7, 6), (2, 18)])  # padding and prompt left, answer and padding right
    keys, values, attention = _adversarial_inputs(cot)
    out = _run(variant, keys, values, cot, attention, budget=M)
    B, L, H = keys.shape[:3]
    assert out.keys.shape == (B, L, H, M, keys.shape[-1]) and out.values.shape == out.keys.shape
    assert out.indices.shape == (B, L, H, M) and out.indices.dtype == torch.long
    assert out.slot_mask.all()
    assert (out.indices[..., 1:] > out.indices[..., :-1]).all()
    in_cot = cot[torch.arange(B)[:, None, None, None], out.indices]  # (B, Λ, Hkv, M)
    assert in_cot.all()


@pytest.mark.parametrize(("variant", "lam"), [("rkv", 1.0), ("importance", 0.5)])
def test_importance_picks_most_attended_cot_positions(variant: str, lam: float) -> None:
    N, M = 12, 3
    cot = _cot_mask(N, [(2, 8)])  # CoT at 2..9
    attention = torch.full((1, 1, 1, N), 0.01)  # (B, Λ, Hq, N)
    attention[0, 0, 0, [0, 1, 10, 11]] = 0.9  # non-CoT columns are the most attended overall
    for pos, weight in {8: 0.5, 3: 0.4, 6: 0.3, 9: 0.2}.items():
        attention[0, 0, 0, pos] = weight
    keys = torch.randn(1, 1, 1, N, 4, generator=torch.Generator().manual_seed(1))  # (B, Λ, Hkv, N, d)
    out = _run(variant, keys, keys.clone(), cot, attention, budget=M, lam=lam)
    assert out.indices[0, 0, 0].tolist() == [3, 6, 8]


@pytest.mark.parametrize("variant", ["rkv", "importance"])
def test_importance_takes_max_over_the_query_heads_of_a_gqa_group(variant: str) -> None:
    N, M = 10, 2
    cot = _cot_mask(N, [(0, 8)])
    A, B_, C, D, E, F = 0, 1, 2, 3, 4, 5
    attention = torch.full((1, 1, 4, N), 0.001)  # (B, Λ, Hq=4, N); heads 0,1 -> kv 0; heads 2,3 -> kv 1
    attention[0, 0, :, 8:] = 0.9  # non-CoT
    attention[0, 0, 0, [A, B_, C]] = torch.tensor([0.45, 0.30, 0.25])
    attention[0, 0, 1, [C, B_, D]] = torch.tensor([0.45, 0.30, 0.25])
    # group max gives A=.45, C=.45 > B=.30; the group mean would give C=.35, B=.30 > A=.225
    attention[0, 0, 2:, [E, F]] = 0.5
    keys = torch.randn(1, 1, 2, N, 4, generator=torch.Generator().manual_seed(2))  # (B, Λ, Hkv=2, N, d)
    out = _run(variant, keys, keys.clone(), cot, attention, budget=M, lam=1.0)
    assert out.indices[0, 0, 0].tolist() == [A, C]
    assert out.indices[0, 0, 1].tolist() == [E, F]  # heads 2,3 (q // G), not heads 0,2 (q % Hkv)


@pytest.mark.parametrize(("variant", "lam"), [("redundancy", 0.5), ("rkv", 0.0)])
def test_redundancy_drops_near_duplicate_keys(variant: str, lam: float) -> None:
    N, d = 9, 8
    cot = _cot_mask(N, [(1, 6)])  # CoT at 1..6
    g = torch.Generator().manual_seed(3)
    keys = torch.zeros(1, 1, 1, N, d)  # (B, Λ, Hkv, N, d)
    eye = torch.eye(d)
    for pos in (1, 3, 4, 6):  # near-duplicates of e0, scattered through the CoT
        keys[0, 0, 0, pos] = eye[0] + 0.01 * torch.randn(d, generator=g)
    keys[0, 0, 0, 2] = eye[1]
    keys[0, 0, 0, 5] = eye[2]
    keys[0, 0, 0, [0, 7, 8]] = eye[3:6]  # distinctive but outside the CoT
    attention = torch.zeros(1, 1, 1, N)  # (B, Λ, Hq, N)
    attention[0, 0, 0, [1, 3, 4, 6]] = 0.25  # importance alone would keep the duplicates
    out2 = _run(variant, keys, keys.clone(), cot, attention, budget=2, lam=lam)
    assert out2.indices[0, 0, 0].tolist() == [2, 5]
    out3 = _run(variant, keys, keys.clone(), cot, attention, budget=3, lam=lam)
    kept = out3.indices[0, 0, 0].tolist()
    assert {2, 5} < set(kept) and len(set(kept) & {1, 3, 4, 6}) == 1


def _reference_scores(keys, cot, attention, lam: float) -> torch.Tensor:
    """Loop-by-loop transcription of METHOD.md §3 for one variant-free check of the formula."""
    B, L, H, N, _ = keys.shape
    G = attention.shape[2] // H
    scores = torch.full((B, L, H, N), float("-inf"))
    for b in range(B):
        pos = _cot_positions(cot, b)
        for layer in range(L):
            for h in range(H):
                imp = attention[b, layer, h * G : (h + 1) * G][:, pos].max(dim=0).values
                imp = imp / imp.sum()
                k = torch.nn.functional.normalize(keys[b, layer, h, pos], dim=-1)
                cos = k @ k.T
                cos.fill_diagonal_(0.0)
                red = torch.softmax(-cos.sum(-1) / len(pos), dim=-1)
                scores[b, layer, h, pos] = lam * imp + (1 - lam) * red
    return scores


def test_rkv_mix_matches_a_loop_reference() -> None:
    N, M, lam = 20, 5, 0.3
    cot = _cot_mask(N, [(2, 12), (5, 9)])
    keys, values, attention = _adversarial_inputs(cot, seed=4)
    keys = keys + torch.randn(keys.shape, generator=torch.Generator().manual_seed(5))
    out = _run("rkv", keys, values, cot, attention, budget=M, lam=lam)
    expected = _reference_scores(keys, cot, attention, lam).topk(M, dim=-1).indices.sort(-1).values
    assert torch.equal(out.indices, expected)


def test_crop_keeps_first_m_cot_positions() -> None:
    N, M = 16, 3
    cot = _cot_mask(N, [(4, 6), (1, 10)])
    keys, values, _ = _adversarial_inputs(cot)
    out = _run("crop", keys, values, cot, None, budget=M)
    assert out.indices[0].unique().tolist() == [4, 5, 6]
    assert out.indices[1].unique().tolist() == [1, 2, 3]
    assert (out.indices[0] == torch.tensor([4, 5, 6])).all()


@pytest.mark.parametrize("variant", VARIANTS)
def test_short_and_empty_traces_mask_unmatched_slots(variant: str) -> None:
    N, M = 14, 5
    cot = _cot_mask(N, [(4, 2), (3, 0), (2, 7)])  # N_C = 2 < M, N_C = 0, N_C = 7 >= M
    keys, values, attention = _adversarial_inputs(cot, seed=6)
    out = _run(variant, keys, values, cot, attention, budget=M)
    assert out.slot_mask.tolist() == [[True, True, False, False, False], [False] * 5, [True] * 5]
    for t in (out.keys, out.values):
        assert not t.isnan().any()
    assert torch.equal(out.keys[0, :, :, :2], keys[0, :, :, 4:6])
    assert torch.equal(out.values[0, :, :, :2], values[0, :, :, 4:6])
    assert (out.keys[0, :, :, 2:] == 0).all() and (out.values[1] == 0).all()
    assert (out.indices[0, :, :, 2:] == 0).all() and (out.indices[1] == 0).all()


@pytest.mark.parametrize("variant", VARIANTS)
def test_sequence_shorter_than_budget(variant: str) -> None:
    N, M = 3, 5
    cot = _cot_mask(N, [(0, 3), (1, 1)])
    keys, values, attention = _adversarial_inputs(cot, seed=7)
    out = _run(variant, keys, values, cot, attention, budget=M)
    assert out.keys.shape[3] == M
    assert out.slot_mask.sum(-1).tolist() == [3, 1]
    assert torch.equal(out.keys[0, :, :, :3], keys[0])
    assert torch.equal(out.keys[1, :, :, :1], keys[1, :, :, 1:2])
    assert not out.keys.isnan().any()


@pytest.mark.parametrize("variant", VARIANTS)
def test_values_are_gathered_at_the_key_indices(variant: str) -> None:
    N, M = 18, 4
    cot = _cot_mask(N, [(2, 11), (6, 8)])
    keys, _, attention = _adversarial_inputs(cot, seed=8)
    B, L, H = keys.shape[:3]
    values = torch.arange(N, dtype=torch.float32).expand(B, L, H, N)[..., None].repeat(1, 1, 1, 1, 3)
    out = _run(variant, keys, values, cot, attention, budget=M)
    assert out.values.shape == (B, L, H, M, 3)
    assert torch.equal(out.values[..., 0].long(), out.indices)
    expected_keys = keys.gather(3, out.indices[..., None].expand(-1, -1, -1, -1, keys.shape[-1]))
    assert torch.equal(out.keys, expected_keys)


def test_bf16_inputs_select_like_fp32_and_keep_dtype() -> None:
    N, M = 20, 6
    cot = _cot_mask(N, [(3, 12), (1, 15)])
    keys, values, attention = _adversarial_inputs(cot, seed=9)
    k16, v16, a16 = keys.bfloat16(), values.bfloat16(), attention.bfloat16()
    out16 = _run("rkv", k16, v16, cot, a16, budget=M)
    out32 = _run("rkv", k16.float(), v16.float(), cot, a16.float(), budget=M)
    assert out16.keys.dtype == torch.bfloat16 and out16.values.dtype == torch.bfloat16
    assert torch.equal(out16.indices, out32.indices)


def test_outputs_are_detached() -> None:
    cot = _cot_mask(10, [(2, 6)])
    keys, values, attention = _adversarial_inputs(cot)
    keys.requires_grad_(True)
    values.requires_grad_(True)
    out = _run("rkv", keys, values, cot, attention, budget=3)
    assert not out.keys.requires_grad and not out.values.requires_grad


def test_answer_attention_averages_only_answer_rows() -> None:
    B, H, N = 3, 2, 6
    g = torch.Generator().manual_seed(10)
    attentions = [torch.softmax(torch.randn(B, H, N, N, generator=g), dim=-1) for _ in range(2)]
    answer = torch.zeros(B, N, dtype=torch.bool)  # (B, N)
    answer[0, [4, 5]] = True
    answer[1, 3] = True  # row 2 has no answer rows
    out = answer_attention(attentions, answer)
    assert out.shape == (B, 2, H, N)
    for layer, a in enumerate(attentions):
        torch.testing.assert_close(out[0, layer], a[0, :, [4, 5]].mean(dim=1))
        torch.testing.assert_close(out[1, layer], a[1, :, 3])
    assert (out[2] == 0).all()
    torch.testing.assert_close(out[:2].sum(-1), torch.ones(2, 2, H))


def test_rejects_bad_inputs() -> None:
    cot = _cot_mask(10, [(2, 6)])
    keys, values, attention = _adversarial_inputs(cot)
    with pytest.raises(ValueError, match="variant"):
        _run("h2o", keys, values, cot, attention, budget=3)
    with pytest.raises(ValueError, match="needs attention"):
        _run("importance", keys, values, cot, None, budget=3)
    with pytest.raises(ValueError, match="budget"):
        _run("crop", keys, values, cot, None, budget=0)
    with pytest.raises(ValueError, match="multiple of Hkv"):
        _run("rkv", keys, values, cot, attention[:, :, :3], budget=3)
