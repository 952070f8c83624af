"""Deterministic data order: a fresh seeded permutation every epoch.

The i-th example a run ever sees is a pure function of (seed, i), so a resumed run at
step N reads exactly what an uninterrupted one would.
"""

from __future__ import annotations

import torch


class EpochSampler:
    def __init__(self, size: int, seed: int):
        if size < 1:
            raise ValueError(f"EpochSampler: dataset is empty (size={size})")
        self.size, self.seed = size, seed
        self._cache: tuple[int, list[int]] | None = None

    def _perm(self, epoch: int) -> list[int]:
        if self._cache is None or self._cache[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._cache = (epoch, torch.randperm(self.size, generator=g).tolist())
        return self._cache[1]

    def indices(self, start: int, count: int) -> list[int]:
        """Dataset indices of global positions [start, start + count)."""
        out = []
        for pos in range(start, start + count):
            epoch, i = divmod(pos, self.size)
            out.append(self._perm(epoch)[i])
        return out
