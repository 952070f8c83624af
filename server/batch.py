"""A request inside the engine (`Job`) and a batch of them as a value (`Batch`), TGI-style.

A batch holds jobs that share one key (adapter, mode, T): `solve_batch` takes one model,
one mode and one T per call, so requests that differ in any of these share the queue but
not the batch. `filter()` drops jobs whose client went away before the batch runs;
`is_cancelled(row)` lets `solve_batch` drop rows mid-decode. Does not own the queue or
the thread (`server.engine`) nor the model (`server.runner`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kava.generate import SolveResult


@dataclass(frozen=True)
class BatchKey:
    adapter: str
    mode: str
    num_iterations: int | None  # None in cot mode (no latents)


@dataclass(frozen=True)
class JobResult:
    """A finished job: the library's result plus where its time went (seconds)."""

    result: SolveResult
    queue_s: float
    ttft_s: float
    prefill_s: float
    latent_s: float
    decode_s: float
    total_s: float
    batch_size: int


# done(outcome) is called exactly once, from the engine thread, with a JobResult or the
# exception the request should fail with; it must hand off to the caller's thread itself.
Done = Callable[[JobResult | BaseException], None]


@dataclass(eq=False)
class Job:
    id: str
    question: str
    key: BatchKey
    max_new_tokens: int
    return_latents: bool
    arrival: float  # time.perf_counter() when the server first saw the request
    done: Done
    cancelled: bool = False  # set by the caller's thread; read by the engine thread
    enqueued: float = 0.0  # time.perf_counter() when it entered the queue


@dataclass
class Batch:
    key: BatchKey
    jobs: list[Job]

    @classmethod
    def from_jobs(cls, jobs: list[Job]) -> Batch:
        assert jobs and all(j.key == jobs[0].key for j in jobs), "a batch needs one key"
        return cls(jobs[0].key, list(jobs))

    def filter(self) -> Batch:
        """The same batch without the jobs cancelled so far (may be empty)."""
        return Batch(self.key, [j for j in self.jobs if not j.cancelled])

    def __len__(self) -> int:
        return len(self.jobs)

    @property
    def questions(self) -> list[str]:
        return [j.question for j in self.jobs]

    @property
    def max_new_tokens(self) -> list[int]:
        return [j.max_new_tokens for j in self.jobs]

    @property
    def return_latents(self) -> bool:
        return any(j.return_latents for j in self.jobs)

    def is_cancelled(self, row: int) -> bool:
        return self.jobs[row].cancelled
