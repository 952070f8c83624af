"""Fixed-shape passes and their CUDA graphs: one launch for a pass instead of a few hundred.

A *uniform* pass is one where every running row adds the same number W of tokens: all rows
decoding (W = 1), or all in the same Jacobi pass (W = M, or M + |`<eot> P`| for the last).
Padded up to a bucket of rows and with attention reading the whole cache (a row's columns
past its end are masked), its forward has the same shapes every time, so it can be captured
once per (bucket, W) and replayed with the next pass's inputs copied into its static
buffers — vLLM's decode graphs. Padding rows take the cache slots past the running rows,
which no running row reads; a slot's stale columns are never read either, because a row
only attends to the columns it has written. Capture happens on first use (the pass being
run is the warm-up, so its cache writes are the real ones, written again identically).

`StaticPass` is that padded, full-width pass without a capture: on CPU it is what the tests
hold equal to the packed pass; on CUDA `GraphPass` captures it. `PassGraphs` keeps one per
(bucket, W) for one `KVCache` and drops them all when the cache is reallocated (a grow).
Does not own the packed pass (`kava.fastlm`) or which rows run (`kava.running`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kava.fastlm import FastLM, KVCache, Plan, Send, forward, mask_upto

BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def bucket(rows: int) -> int | None:
    """The smallest bucket holding `rows` rows (None: more than the largest)."""
    return next((b for b in BUCKETS if b >= rows), None)


class StaticPass:
    """One (rows, width) pass over a cache with fixed buffers: x, the rows' slots, their positions."""

    def __init__(self, lm: FastLM, cache: KVCache, rows: int, width: int):
        self.lm, self.cache, self.rows, self.width = lm, cache, rows, width
        n = rows * width
        self.x = torch.zeros(n, lm.embedding.shape[1], dtype=lm.dtype, device=lm.device)  # (N, D)
        self.slot = torch.arange(rows, device=lm.device).repeat_interleave(width)  # (N,) fixed: row r's tokens
        self.index = torch.zeros(n + rows, dtype=torch.long, device=lm.device)  # what changes each pass
        self.pos, self.starts = self.index.split([n, rows])

    def load(self, x: torch.Tensor, starts: Sequence[int], send: Send) -> None:
        """This pass's packed inputs (b * width, D) for rows 0..b-1 starting at `starts`;
        rows b.. of the bucket are padding: zero inputs at columns 0..width-1 of their slots."""
        w, n = self.width, x.shape[0]
        starts = list(starts) + [0] * (self.rows - len(starts))
        pos = [s + j for s in starts for j in range(w)]
        self.index.copy_(send([pos + starts])[0])
        self.x[:n].copy_(x)
        self.x[n:].zero_()

    def run(self) -> torch.Tensor:
        """(rows * width, D) last-layer outputs, before the final norm."""
        w, length = self.width, self.cache.length
        plan = Plan(self.rows, w, length, self.slot, self.pos, None, mask_upto(self.starts, w, length))
        return forward(self.lm, self.cache, self.x, plan)


class GraphPass(StaticPass):
    """A `StaticPass` captured into a CUDA graph; `capture` after the first `load`."""

    graph: torch.cuda.CUDAGraph
    out: torch.Tensor

    def capture(self, pool) -> None:
        stream = torch.cuda.Stream(self.lm.device)
        stream.wait_stream(torch.cuda.current_stream(self.lm.device))
        with torch.cuda.stream(stream):  # warm-up off the capture (kernel selection, workspace)
            super().run()
        torch.cuda.current_stream(self.lm.device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.out = super().run()

    def run(self) -> torch.Tensor:
        self.graph.replay()
        return self.out


class PassGraphs:
    """The fixed-shape passes of one running batch's cache, built on first use."""

    def __init__(self, lm: FastLM, cache: KVCache, max_width: int):
        """`max_width`: the widest pass to fix (the latent passes'; a prefill stays packed)."""
        self.lm, self.cache, self.max_width = lm, cache, max_width
        self.cuda = lm.device.type == "cuda"
        self.pool = torch.cuda.graph_pool_handle() if self.cuda else None
        self.passes: dict[tuple[int, int], StaticPass] = {}
        self._version = cache.version

    def fits(self, counts: Sequence[int]) -> bool:
        """Whether a pass adding `counts[r]` tokens to row r has a fixed shape here."""
        size = bucket(len(counts))
        uniform = len(set(counts)) == 1 and counts[0] <= self.max_width
        return uniform and size is not None and size <= self.cache.rows

    def run(self, x: torch.Tensor, starts: Sequence[int], counts: Sequence[int], send: Send) -> torch.Tensor:
        """The pass `fits` accepted: packed inputs (N, D) -> last-layer outputs (N, D)."""
        if self.cache.version != self._version:  # the cache was reallocated: stale captures
            self.passes.clear()
            self._version = self.cache.version
        key = (bucket(len(counts)), counts[0])
        p = self.passes.get(key)
        fresh = p is None
        if fresh:
            p = (GraphPass if self.cuda else StaticPass)(self.lm, self.cache, *key)
            self.passes[key] = p
        p.load(x, starts, send)
        if fresh and isinstance(p, GraphPass):
            p.capture(self.pool)
        return p.run()[: x.shape[0]]
