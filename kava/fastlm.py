"""Inference fast path, the model half: merged weights and one packed forward pass.

Owns `FastLM` — one adapter's view of the backbone with its LoRA merged into copies of the
weights it touches (so a pass costs what the base costs), q/k/v and gate/up fused into one
matmul each — built from a `KavaModel` through a small family table; `KVCache`, one
preallocated (Λ, rows, Hkv, L, d) tensor each for keys and values whose rows are slots;
`Plan`, the host-built index tensors of one pass; and `forward`, one pass of packed tokens
(every row's new tokens back to back, no padding through the matmuls) with SDPA attention
over the static cache. Norms, activations and rotary embeddings are the backbone's own
modules, so the numbers are the reference path's up to float rounding (tested equal).

Training never comes here: it keeps `KavaModel.forward` (peft LoRA, unmerged). Does not own
the method's phases (`kava.running`) nor the choice between this and the reference path
(`kava.generate`).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from kava.backbone import KavaModel


class FastPathUnsupported(ValueError):
    """This backbone or adapter has no fast form; the reference path still runs it."""


@dataclass(frozen=True)
class Family:
    """Where a family keeps its parts (paths from the causal LM and from one layer)."""

    layers: str
    final_norm: str
    norm1: str
    norm2: str
    qkv: tuple[str, ...]  # one fused module, or q, k, v
    attn: str  # the attention module (head_dim, scaling)
    attn_out: str
    mlp_in: tuple[str, ...]  # two = gated: act(first) * second
    mlp_out: str
    act: str
    rotary: str | None = None  # rotary embedding module (cos, sin from position ids)
    positions: str | None = None  # learned absolute position embedding


_ROTARY = Family(
    layers="model.layers",
    final_norm="model.norm",
    norm1="input_layernorm",
    norm2="post_attention_layernorm",
    qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    attn="self_attn",
    attn_out="self_attn.o_proj",
    mlp_in=("mlp.gate_proj", "mlp.up_proj"),
    mlp_out="mlp.down_proj",
    act="mlp.act_fn",
    rotary="model.rotary_emb",
)
_GPT2 = Family(
    layers="transformer.h",
    final_norm="transformer.ln_f",
    norm1="ln_1",
    norm2="ln_2",
    qkv=("attn.c_attn",),
    attn="attn",
    attn_out="attn.c_proj",
    mlp_in=("mlp.c_fc",),
    mlp_out="mlp.c_proj",
    act="mlp.act",
    positions="transformer.wpe",
)
FAMILIES: dict[str, Family] = {"llama": _ROTARY, "qwen2": _ROTARY, "gpt2": _GPT2}


def _weight(module: nn.Module, adapter: str | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W (out, in), bias) of a Linear or Conv1D, with `adapter`'s LoRA merged in (fp32 sum)."""
    from peft.tuners.lora import LoraLayer

    lora = module if isinstance(module, LoraLayer) else None
    base = lora.get_base_layer() if lora is not None else module
    w, b = base.weight, base.bias
    if isinstance(base, Conv1D):
        w = w.t()  # Conv1D keeps (in, out)
    elif not isinstance(base, nn.Linear):
        raise FastPathUnsupported(f"{type(base).__name__} layers have no fast form")
    if lora is None or adapter is None or adapter not in lora.lora_A or lora.disable_adapters:
        return w.contiguous(), b
    if lora.merged_adapters:
        raise FastPathUnsupported("LoRA already merged into the base weights (peft merge_adapter)")
    if adapter in getattr(lora, "lora_variant", {}):
        raise FastPathUnsupported(f"LoRA variant {type(lora.lora_variant[adapter]).__name__} (e.g. DoRA)")
    scale = lora.scaling[adapter]
    delta = lora.lora_B[adapter].weight.float() @ lora.lora_A[adapter].weight.float()  # (out, in)
    w = (w.float() + delta * scale).to(w.dtype)
    if lora.lora_bias.get(adapter, False):
        b = (b.float() + lora.lora_B[adapter].bias.float() * scale).to(b.dtype)
    return w, b


def _fused(parts: Sequence[tuple[torch.Tensor, torch.Tensor | None]]) -> tuple[torch.Tensor, torch.Tensor | None]:
    if len(parts) == 1:
        return parts[0]
    w = torch.cat([p[0] for p in parts], 0)
    if all(p[1] is None for p in parts):
        return w, None
    b = torch.cat([p[1] if p[1] is not None else w.new_zeros(p[0].shape[0]) for p in parts], 0)
    return w, b


@dataclass
class Layer:
    norm1: nn.Module
    norm2: nn.Module
    act: Callable[[torch.Tensor], torch.Tensor]
    w_qkv: torch.Tensor  # (Hq d + 2 Hkv d, D)
    b_qkv: torch.Tensor | None
    w_o: torch.Tensor  # (D, Hq d)
    b_o: torch.Tensor | None
    w_in: torch.Tensor  # (2F or F, D)
    b_in: torch.Tensor | None
    w_out: torch.Tensor  # (D, F)
    b_out: torch.Tensor | None
    gated: bool
    scaling: float


class FastLM:
    """One adapter's backbone for inference: merged weights, the backbone's own small modules."""

    def __init__(self, model: KavaModel):
        lm = model.lm
        base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
        cfg = base.config
        family = FAMILIES.get(cfg.model_type)
        if family is None:
            raise FastPathUnsupported(f"model_type {cfg.model_type!r}: the fast path knows {sorted(FAMILIES)}")
        if any(t != "full_attention" for t in getattr(cfg, "layer_types", None) or ()):
            raise FastPathUnsupported("sliding-window layers have no fast form")
        if getattr(cfg, "add_cross_attention", False):
            raise FastPathUnsupported("cross-attention layers have no fast form")
        adapter = model.adapter_name if hasattr(lm, "peft_config") else None
        get = base.get_submodule
        self.layers: list[Layer] = []
        for block in get(family.layers):
            attn = block.get_submodule(family.attn)
            w_qkv, b_qkv = _fused([_weight(block.get_submodule(p), adapter) for p in family.qkv])
            w_in, b_in = _fused([_weight(block.get_submodule(p), adapter) for p in family.mlp_in])
            w_o, b_o = _weight(block.get_submodule(family.attn_out), adapter)
            w_out, b_out = _weight(block.get_submodule(family.mlp_out), adapter)
            self.layers.append(
                Layer(
                    block.get_submodule(family.norm1),
                    block.get_submodule(family.norm2),
                    block.get_submodule(family.act),
                    w_qkv, b_qkv, w_o, b_o, w_in, b_in, w_out, b_out,
                    gated=len(family.mlp_in) == 2,
                    scaling=float(attn.scaling),
                )
            )  # fmt: skip
        self.n_q = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_q
        self.head_dim = int(get(f"{family.layers}.0.{family.attn}").head_dim)
        self.final_norm = get(family.final_norm)
        self.rotary = get(family.rotary) if family.rotary else None
        self.positions = get(family.positions) if family.positions else None
        self.embedding = lm.get_input_embeddings().weight  # (V, D)
        self.head_w, self.head_b = _weight(lm.get_output_embeddings(), adapter)  # (V, D)
        # the method's rows replace the backbone's for <bot> <eot> <latent> (KavaModel.embed)
        vocab = self.embedding.shape[0]
        self.special_of = torch.zeros(vocab, dtype=torch.long, device=model.device)
        self.special_of[model.special_ids] = torch.arange(3, device=model.device)
        self.is_special = torch.zeros(vocab, dtype=torch.bool, device=model.device)
        self.is_special[model.special_ids] = True
        self.special_rows = model.special_rows.detach()
        self.special_ids = model.special_ids
        self.dtype, self.device = self.embedding.dtype, self.embedding.device

    @property
    def bytes_per_token(self) -> int:
        """KV bytes one token costs across all layers: 2 (K, V) x Λ x Hkv x d x element size."""
        return 2 * len(self.layers) * self.n_kv * self.head_dim * self.embedding.element_size()

    def embed(self, ids: torch.Tensor, specials: bool = True) -> torch.Tensor:  # (N,) -> (N, D)
        """As KavaModel.embed; `specials=False` when no method token can be among `ids`."""
        e = F.embedding(ids, self.embedding)  # (N, D)
        if not specials:
            return e
        rows = self.special_rows[self.special_of[ids]].to(e.dtype)  # (N, D)
        return torch.where(self.is_special[ids][:, None], rows, e)

    def logits(self, h: torch.Tensor) -> torch.Tensor:  # (K, D) after the final norm -> (K, V)
        return F.linear(h, self.head_w, self.head_b)


@dataclass
class _Built:
    params: tuple[torch.Tensor, ...]  # model.parameters() when built (walking the module tree costs ~0.5 ms)
    key: tuple
    lm: FastLM


_BUILT: weakref.WeakKeyDictionary[KavaModel, _Built] = weakref.WeakKeyDictionary()


def _weights_key(adapter: str, params: tuple[torch.Tensor, ...]) -> tuple:
    """Changes whenever a weight is updated in place (an optimizer step, a load) or moved."""
    return (adapter, *((p.data_ptr(), p._version) for p in params))


def fast_lm(model: KavaModel) -> FastLM:
    """`model`'s fast form, built once and rebuilt only after its weights change (training
    between evaluations) or its active adapter does. Weights are watched as the parameter
    objects the model had when it was built: one replaced by a new object rather than
    updated in place needs `forget_fast(model)`. Raises FastPathUnsupported when there is none."""
    hit = _BUILT.get(model)
    if hit is not None and hit.key == _weights_key(model.adapter_name, hit.params):
        return hit.lm
    _BUILT.pop(model, None)  # free the stale copy before building the next one
    params = tuple(model.parameters())
    with torch.no_grad():
        fast = FastLM(model)
    _BUILT[model] = _Built(params, _weights_key(model.adapter_name, params), fast)
    return fast


def forget_fast(model: KavaModel) -> None:
    """Drop `model`'s fast form; the next `fast_lm(model)` rebuilds it from its current weights."""
    _BUILT.pop(model, None)


class KVCache:
    """Static keys and values: (Λ, rows, Hkv, length, d) each, zero-initialised. A row is a
    slot; the running rows always fill slots 0..B-1, so attention reads a view, not a gather."""

    def __init__(self, lm: FastLM, rows: int, length: int):
        self.shape = (len(lm.layers), rows, lm.n_kv, length, lm.head_dim)
        self.k = torch.zeros(self.shape, dtype=lm.dtype, device=lm.device)
        self.v = torch.zeros(self.shape, dtype=lm.dtype, device=lm.device)
        self.version = 0  # +1 on every reallocation (what a captured pass points at is gone)

    @property
    def rows(self) -> int:
        return self.shape[1]

    @property
    def length(self) -> int:
        return self.shape[3]

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2

    def grow(self, rows: int, length: int) -> None:
        """Reallocate to at least (rows, length), keeping what is stored."""
        if rows <= self.rows and length <= self.length:
            return
        old_k, old_v, (_, r, _, n, _) = self.k, self.v, self.shape
        self.shape = (self.shape[0], max(rows, r), self.shape[2], max(length, n), self.shape[4])
        self.k = old_k.new_zeros(self.shape)
        self.v = old_v.new_zeros(self.shape)
        self.version += 1
        self.k[:, :r, :, :n] = old_k
        self.v[:, :r, :, :n] = old_v

    def move(self, src: int, dst: int) -> None:
        """Slot `src` -> slot `dst` (compaction when a row leaves)."""
        self.k[:, dst] = self.k[:, src]
        self.v[:, dst] = self.v[:, src]


@dataclass
class Split:
    """A mixed pass (some rows add one token, some many): the one-token rows attend on a
    (B, 1) query grid over the batch's cache view, the multi-token rows on their own
    (Bm, Wm) grid over a copy of their cache rows — instead of every row padded to W."""

    first: torch.Tensor  # (B,) packed index of each row's first token (a one-token row's only one)
    view1: int  # cache columns the (B, 1) grid reads
    mask1: torch.Tensor  # (B, 1, 1, view1)
    ones_rows: torch.Tensor  # (S,) rows that add one token
    ones_pos: torch.Tensor  # (S,) their packed index
    multi_rows: torch.Tensor  # (Bm,) rows that add several
    multi_pos: torch.Tensor  # (Nm,) packed index of their tokens
    pad: torch.Tensor  # (Nm,) index into the (Bm * Wm) grid
    width: int  # Wm
    view: int  # cache columns the multi-token grid reads
    mask: torch.Tensor  # (Bm, 1, Wm, view)


@dataclass
class Plan:
    """Where one pass's packed tokens go: row r writes counts[r] tokens at cache indices
    starts[r].. (position id = cache index: a row's tokens start at index 0, unpadded).
    Attention runs on a query grid: (B, W) with rows padded to the widest, or a `Split`."""

    rows: int  # B: slots 0..B-1 take part
    width: int  # W: the most tokens any row adds
    view: int  # cache columns attention reads
    slot: torch.Tensor  # (N,) each token's row
    pos: torch.Tensor  # (N,) each token's cache index and position id
    pad: torch.Tensor | None  # (N,) index into the (B * W) query grid; None when packed == grid
    mask: torch.Tensor | None  # (B, 1, W, view) bool: key k visible to query j of row r iff k <= starts[r] + j
    split: Split | None = None  # a mixed pass (then pad and mask are None)

    @classmethod
    def build(
        cls, starts: Sequence[int], counts: Sequence[int], device: torch.device, send: Send | None = None
    ) -> Plan:
        """`send` moves the host-built index lists to `device` (default: `to_device`, one copy)."""
        send = send or (lambda parts: to_device(parts, device))
        b, w = len(starts), max(counts)
        view = max(s + n for s, n in zip(starts, counts))
        slot = [r for r, n in enumerate(counts) for _ in range(n)]
        pos = [s + j for s, n in zip(starts, counts) for j in range(n)]
        multi = [r for r, n in enumerate(counts) if n > 1]
        if 0 < len(multi) < b:
            return cls._mixed(starts, counts, multi, view, slot, pos, send)
        grid = None if all(n == w for n in counts) else [r * w + j for r, n in enumerate(counts) for j in range(n)]
        slot_t, pos_t, pad_t, start_t = send([slot, pos, grid or [], starts])
        return cls(b, w, view, slot_t, pos_t, pad_t if grid is not None else None, mask_upto(start_t, w, view))

    @classmethod
    def _mixed(cls, starts, counts, multi, view, slot, pos, send: Send) -> Plan:
        offsets = [0]
        for n in counts[:-1]:
            offsets.append(offsets[-1] + n)
        ones = [r for r, n in enumerate(counts) if n == 1]
        wm = max(counts[r] for r in multi)
        parts = [
            slot,
            pos,
            offsets,
            list(starts),
            ones,
            [offsets[r] for r in ones],
            multi,
            [offsets[r] + j for r in multi for j in range(counts[r])],
            [i * wm + j for i, r in enumerate(multi) for j in range(counts[r])],
            [starts[r] for r in multi],
        ]
        slot_t, pos_t, first, start_t, ones_rows, ones_pos, multi_rows, multi_pos, pad, multi_start = send(parts)
        view1 = max(starts) + 1
        view_m = max(starts[r] + counts[r] for r in multi)
        split = Split(first, view1, mask_upto(start_t, 1, view1), ones_rows, ones_pos, multi_rows, multi_pos, pad, wm,
                      view_m, mask_upto(multi_start, wm, view_m))  # fmt: skip
        return cls(len(starts), max(counts), view, slot_t, pos_t, None, None, split)


Send = Callable[[Sequence[Sequence[int]]], list[torch.Tensor]]  # host index lists -> device tensors


def to_device(parts: Sequence[Sequence[int]], device: torch.device) -> list[torch.Tensor]:
    """Host index lists -> long tensors on `device`, in one copy."""
    flat = torch.tensor([v for part in parts for v in part], dtype=torch.long).to(device, non_blocking=True)
    return list(flat.split([len(part) for part in parts]))


class Staging:
    """A pass's host-built index lists, sent to the device without waiting for it.

    On CUDA a copy from pageable memory first waits for the stream (the running work), so a
    pass that sent five index tensors waited five times. Here every list goes through one pinned
    host buffer, allocated once and grown when needed, in copies that queue behind the work in
    flight. `reset()` at the start of each pass: the buffer is reused from offset 0, which is
    safe because every pass ends with a host sync (the sampled ids, or a synchronize), so no
    copy out of the buffer is still pending. On CPU it is `to_device`."""

    def __init__(self, device: torch.device, size: int = 1 << 14):
        self.device, self.used = device, 0
        self.cuda = device.type == "cuda"
        self.host = torch.empty(size if self.cuda else 0, dtype=torch.long, pin_memory=self.cuda)
        self.dev = torch.empty(size if self.cuda else 0, dtype=torch.long, device=device)

    def reset(self) -> None:
        self.used = 0

    def send(self, parts: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        if not self.cuda:
            return to_device(parts, self.device)
        flat = [v for part in parts for v in part]
        a, b = self.used, self.used + len(flat)
        if b > self.host.numel():  # grow: new buffers, so copies queued from the old ones stay valid
            size = max(b, 2 * self.host.numel())
            self.host = torch.empty(size, dtype=torch.long, pin_memory=True)
            self.dev = torch.empty(size, dtype=torch.long, device=self.device)
            a, b = 0, len(flat)
        self.host[a:b] = torch.tensor(flat, dtype=torch.long)
        out = self.dev[a:b]
        out.copy_(self.host[a:b], non_blocking=True)
        self.used = b
        return list(out.split([len(part) for part in parts]))


def mask_upto(starts: torch.Tensor, width: int, view: int) -> torch.Tensor:
    """(B, 1, width, view) bool: key k visible to query j of row r iff k <= starts[r] + j."""
    qend = starts[:, None] + torch.arange(width, device=starts.device)  # (B, W)
    return torch.arange(view, device=starts.device) <= qend[:, None, :, None]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scaling: float) -> torch.Tensor:
    """(B, W, Hq, d) queries on (B, Hkv, view, d) keys and values -> (B * W, Hq d)."""
    b, w, hq, d = q.shape
    dtype = q.dtype
    if q.device.type == "cpu" and dtype == torch.bfloat16:  # CPU SDPA is slower in bf16 (kava.attention)
        q, k, v = q.float(), k.float(), v.float()
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k, v, attn_mask=mask, scale=scaling, enable_gqa=hq != k.shape[1]
    )  # (B, Hq, W, d)
    return out.transpose(1, 2).reshape(b * w, hq * d).to(dtype)


def _grid(q: torch.Tensor, pad: torch.Tensor | None, rows: int, width: int) -> torch.Tensor:
    """Packed (N, Hq, d) -> the (rows, width, Hq, d) query grid, zeros where a row is short."""
    n, hq, d = q.shape
    grid = q if pad is None else q.new_zeros(rows * width, hq, d).index_copy_(0, pad, q)
    return grid.view(rows, width, hq, d)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: Plan, scaling: float) -> torch.Tensor:
    """q (N, Hq, d) against rows 0..B-1 of one layer's cache (rows, Hkv, L, d) -> (N, Hq d)."""
    b, sp = plan.rows, plan.split
    if sp is None:
        out = _sdpa(_grid(q, plan.pad, b, plan.width), k[:b, :, : plan.view], v[:b, :, : plan.view], plan.mask, scaling)
        return out if plan.pad is None else out.index_select(0, plan.pad)
    out = q.new_empty(q.shape[0], q.shape[1] * q.shape[2])  # (N, Hq d)
    first = q.index_select(0, sp.first)[:, None]  # (B, 1, Hq, d)
    ones = _sdpa(first, k[:b, :, : sp.view1], v[:b, :, : sp.view1], sp.mask1, scaling)  # (B, Hq d)
    out.index_copy_(0, sp.ones_pos, ones.index_select(0, sp.ones_rows))
    km = k[:, :, : sp.view].index_select(0, sp.multi_rows)  # (Bm, Hkv, view, d), a copy of few rows
    vm = v[:, :, : sp.view].index_select(0, sp.multi_rows)
    grid = _grid(q.index_select(0, sp.multi_pos), sp.pad, len(sp.multi_rows), sp.width)
    out.index_copy_(0, sp.multi_pos, _sdpa(grid, km, vm, sp.mask, scaling).index_select(0, sp.pad))
    return out


def forward(lm: FastLM, cache: KVCache, x: torch.Tensor, plan: Plan) -> torch.Tensor:
    """One pass: packed inputs (N, D) -> last-layer outputs (N, D) before the final norm.
    Every token's K and V land in the cache before attention reads it."""
    n = x.shape[0]
    hq, hkv, d = lm.n_q, lm.n_kv, lm.head_dim
    h = x
    if lm.positions is not None:
        h = h + lm.positions(plan.pos)  # (N, D)
    cos = sin = None
    if lm.rotary is not None:
        cos, sin = lm.rotary(h, plan.pos[None])  # (1, N, d) each
        cos, sin = cos[0, :, None], sin[0, :, None]  # (N, 1, d)
    length = cache.length
    # each (token, KV head) row of the cache viewed as (rows * Hkv * L, d): one index_copy_ per write
    rows = ((plan.slot[:, None] * hkv + torch.arange(hkv, device=x.device)) * length + plan.pos[:, None]).flatten()
    for i, layer in enumerate(lm.layers):
        a = layer.norm1(h)  # (N, D)
        q, k, v = F.linear(a, layer.w_qkv, layer.b_qkv).split([hq * d, hkv * d, hkv * d], dim=-1)
        q, k, v = q.view(n, hq, d), k.view(n, hkv, d), v.view(n, hkv, d)
        if cos is not None:
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
        cache.k[i].view(-1, d).index_copy_(0, rows, k.reshape(-1, d))  # (N Hkv, d) into (rows Hkv L, d)
        cache.v[i].view(-1, d).index_copy_(0, rows, v.reshape(-1, d))
        h = h + F.linear(_attend(q, cache.k[i], cache.v[i], plan, layer.scaling), layer.w_o, layer.b_o)
        m = F.linear(layer.norm2(h), layer.w_in, layer.b_in)  # (N, 2F | F)
        if layer.gated:
            gate, up = m.chunk(2, dim=-1)
            m = layer.act(gate) * up
        else:
            m = layer.act(m)
        h = h + F.linear(m, layer.w_out, layer.b_out)
    return h
