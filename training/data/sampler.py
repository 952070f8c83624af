"""Deterministic data order: a fresh seeded permutation every epoch, optionally grouped by length.

The i-th example a run ever sees is a pure function of (seed, i), so a resumed run at
step N reads exactly what an uninterrupted one would. With `group` > 0 (HF's
`group_by_length`, as a mega-batch factor) each run of `group` batches of the permutation
is sorted by length and cut into batches whose order is shuffled again: a batch holds
rows of similar length, so right- and left-padded passes waste fewer columns, and every
example is still seen once an epoch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class EpochSampler:
    def __init__(self, size: int, seed: int, *, lengths: Sequence[int] | None = None, batch: int = 0, group: int = 0):
        if size < 1:
            raise ValueError(f"EpochSampler: dataset is empty (size={size})")
        if group and (lengths is None or len(lengths) != size or batch < 1):
            raise ValueError("EpochSampler: group > 0 needs one length per example and batch >= 1")
        self.size, self.seed = size, seed
        self.lengths, self.batch, self.group = lengths, batch, group
        self._cache: tuple[int, list[int]] | None = None

    def _perm(self, epoch: int) -> list[int]:
        if self._cache is None or self._cache[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(self.size, generator=g).tolist()
            self._cache = (epoch, self._grouped(perm, g) if self.group else perm)
        return self._cache[1]

    def _grouped(self, perm: list[int], g: torch.Generator) -> list[int]:
        out: list[int] = []
        span = self.batch * self.group
        for start in range(0, len(perm), span):
            chunk = sorted(perm[start : start + span], key=lambda i: self.lengths[i], reverse=True)
            batches = [chunk[i : i + self.batch] for i in range(0, len(chunk), self.batch)]
            for j in torch.randperm(len(batches), generator=g).tolist():
                out += batches[j]
        return out

    def indices(self, start: int, count: int) -> list[int]:
        """Dataset indices of global positions [start, start + count)."""
        out = []
        for pos in range(start, start + count):
            epoch, i = divmod(pos, self.size)
            out.append(self._perm(epoch)[i])
        return out
