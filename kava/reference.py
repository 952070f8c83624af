"""The reference inference path: the method's step functions on the HF model through peft.

Owns the plain implementation every fast path is tested against: `solve_reference` runs
`kava.latent`'s prefill and latent phases through `KavaModel.forward` (LoRA unmerged,
growing `DynamicCache`) and greedy answer decoding in which finished rows leave the batch.
It also runs models the fast path does not cover (`kava.fastlm.FAMILIES`). Does not own
the choice of path (`kava.generate`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache

from kava.answers import extract_answer
from kava.backbone import KavaModel
from kava.config import Mode
from kava.latent import Prefix, prefill, run_latents
from kava.prompts import encode_prefixes, prompt_ids
from kava.results import BatchOutput, BatchStats, SolveResult, nearest_tokens


class _Clock:
    """Phase timer that waits for the device, so GPU phases are not under-reported."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.t0 = self.last = self._now()

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def lap(self) -> float:
        now = self._now()
        dt, self.last = now - self.last, now
        return dt

    def since_start(self) -> float:
        return self._now() - self.t0


def cache_bytes(cache: DynamicCache) -> int:
    return sum(layer.keys.numel() * layer.keys.element_size() * 2 for layer in cache.layers if layer.is_initialized)


def bytes_per_token(cache: DynamicCache) -> int:
    """KV bytes one token costs across all layers: 2 (K, V) x Hkv x d x element size."""
    return sum(
        layer.keys.shape[1] * layer.keys.shape[3] * layer.keys.element_size() * 2
        for layer in cache.layers
        if layer.is_initialized
    )


@dataclass
class Decoded:
    tokens: list[list[int]]
    finish: list[str]
    passes_per_row: list[int]
    passes: int
    peak_bytes: int


def greedy_decode(
    model: KavaModel,
    cache: DynamicCache,
    mask: torch.Tensor,
    lengths: torch.Tensor,
    logits: torch.Tensor,
    max_new_tokens: Sequence[int],
    is_cancelled: Callable[[int], bool] | None = None,
) -> Decoded:
    """Greedy decoding from `logits` (B, V); a row leaves the batch at `<eos>`, at its own
    `max_new_tokens`, or when `is_cancelled(row)` says so. The method tokens are never emitted."""
    b = logits.shape[0]
    eos = model.ids.eos
    tokens: list[list[int]] = [[] for _ in range(b)]
    finish = ["length"] * b
    row_passes = [0] * b
    active = list(range(b))
    passes, peak = 0, cache_bytes(cache)
    while True:
        logits = logits.float().index_fill(-1, model.special_ids, float("-inf"))
        nxt = logits.argmax(-1)  # (B_active,)
        keep = []
        for i, (row, tok) in enumerate(zip(active, nxt.tolist())):
            if len(tokens[row]) >= max_new_tokens[row]:
                continue  # max_new_tokens == 0
            tokens[row].append(tok)
            if tok == eos:
                finish[row] = "stop"
            elif is_cancelled is not None and is_cancelled(row):
                finish[row] = "cancelled"
            elif len(tokens[row]) < max_new_tokens[row]:
                keep.append(i)
        if not keep:
            break
        if len(keep) < len(active):  # finished rows stop costing compute
            idx = torch.tensor(keep, device=mask.device)
            cache.batch_select_indices(idx)
            mask, lengths, nxt = mask[idx], lengths[idx], nxt[idx]
            active = [active[i] for i in keep]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)  # (B_active, L + 1)
        out = model(model.embed(nxt[:, None]), mask, lengths[:, None], cache)
        cache, lengths, logits = out.cache, lengths + 1, out.logits[:, -1]
        passes += 1
        for row in active:
            row_passes[row] += 1
        peak = max(peak, cache_bytes(cache))
    return Decoded(tokens, finish, row_passes, passes, peak)


@torch.inference_mode()
def solve_reference(
    model: KavaModel,
    questions: Sequence[str],
    *,
    mode: Mode = "latent",
    num_iterations: int | None = None,
    max_new_tokens: int | Sequence[int] = 64,
    sequential: bool | None = None,
    return_latents: bool = False,
    is_cancelled: Callable[[int], bool] | None = None,
) -> BatchOutput:
    """`kava.generate.solve_batch` on the reference path (arguments checked there)."""
    model.activate()
    cfg = model.config
    b = len(questions)
    limits = [max_new_tokens] * b if isinstance(max_new_tokens, int) else list(max_new_tokens)
    assert len(limits) == b, "one max_new_tokens per question"
    stats = BatchStats(batch_size=b, mode=mode)
    clock = _Clock(model.device)

    latent = mode == "latent"
    m = cfg.num_latents if latent else 0
    t = cfg.num_iterations if num_iterations is None else num_iterations
    seq = cfg.sequential if sequential is None else sequential
    fuse_init = latent and not seq and t > 0  # the init pass rides in the prefill pass
    batch = encode_prefixes(model.tokenizer, questions, model.ids, with_bot=latent).to(model.device)
    pre: Prefix = prefill(model, batch, init_slots=m if fuse_init else 0)
    stats.prefill_s, stats.passes["prefill"] = clock.lap(), 1
    latents_out = None
    if latent:
        # `<eot> P` is the same for every row: it rides in the last latent pass, unpadded
        suffix = torch.tensor([[model.ids.eot] + prompt_ids(model.tokenizer, cfg)], device=model.device)
        lat = run_latents(
            model, pre, num_latents=m, num_iterations=t, sequential=seq, suffix=model.embed(suffix).expand(b, -1, -1)
        )
        cache, mask, lengths, logits = lat.cache, lat.mask, lat.lengths, lat.suffix_logits
        stats.passes["latent"] = lat.passes
        latents_out = lat.inputs
        stats.latent_s = clock.lap()
    else:
        cache, mask, lengths, logits = pre.cache(), pre.mask, pre.lengths, pre.last_logits
    stats.first_token_s = clock.since_start()
    per_token = bytes_per_token(cache)
    prompt_lens = pre.lengths.tolist()
    held_before = lengths.tolist()

    dec = greedy_decode(model, cache, mask, lengths, logits, limits, is_cancelled)
    stats.decode_s = clock.lap()
    stats.passes["decode"] = dec.passes
    stats.peak_kv_bytes = dec.peak_bytes
    stats.total_s = clock.since_start()

    nearest = nearest_tokens(model, latents_out) if (return_latents and latents_out is not None) else None
    results = []
    for i in range(b):
        text = model.tokenizer.decode(dec.tokens[i], skip_special_tokens=True)
        n_gen = len(dec.tokens[i])
        # the last generated token is never fed back, so it never occupies the cache
        held = held_before[i] + max(n_gen - 1, 0)
        results.append(
            SolveResult(
                text=text.strip(),
                answer=extract_answer(text, cfg.answer_prompt),
                finish_reason=dec.finish[i],
                prompt_tokens=prompt_lens[i],
                latent_tokens=m,
                generated_tokens=n_gen,
                forward_passes=stats.passes["prefill"] + stats.passes["latent"] + dec.passes_per_row[i],
                kv_cache_bytes=held * per_token,
                latent_nearest_tokens=nearest[i] if nearest is not None else None,
            )
        )
    return BatchOutput(results, stats)
