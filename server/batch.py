"""A request inside the engine (`Job`), the running batch as a value (`Batch`), and what
one engine step hands back (`StepOutput`), TGI-style.

The running batch holds the jobs of ONE adapter, whatever their mode and T: latent and CoT
rows share every forward pass. Jobs join it between passes (their prefill is their first
pass) and leave when they finish, are cancelled, or pass their deadline. `Job.on_token`
is the per-token hook (see `server.engine`). Does not own the queue or the thread
(`server.engine`) nor the model (`server.runner`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from kava.generate import SolveResult


@dataclass(frozen=True)
class BatchKey:
    """What a job asks for. Only `adapter` decides which running batch it joins."""

    adapter: str
    mode: str
    num_iterations: int | None  # None in cot mode (no latents)


@dataclass(frozen=True)
class JobResult:
    """A finished job: the library's result plus where its time went (seconds)."""

    result: SolveResult
    queue_s: float  # arrival -> joining the running batch
    ttft_s: float  # arrival -> the first answer token's logits
    prefill_s: float  # the passes it spent in each phase (each pass also carried other rows)
    latent_s: float
    decode_s: float
    total_s: float


# done(outcome) is called exactly once, from the engine thread, with a JobResult or the
# exception the request should fail with; it must hand off to the caller's thread itself.
Done = Callable[[JobResult | BaseException], None]
# on_token(token_id, text) is called on the engine thread for every answer token, as soon as
# its pass ends; it must be quick and must hand off to the caller's thread itself.
OnToken = Callable[[int, str], None]


@dataclass(eq=False)
class Job:
    id: str
    question: str
    key: BatchKey
    max_new_tokens: int
    return_latents: bool
    arrival: float  # time.perf_counter() when the server first saw the request
    done: Done | None = None  # set by whoever submits it (server.async_engine)
    cancelled: bool = False  # set by the caller's thread; read by the engine thread
    enqueued: float = 0.0  # time.perf_counter() when it entered the queue
    on_token: OnToken | None = None
    deadline: float | None = None  # time.perf_counter() past which the engine drops it

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now > self.deadline


@dataclass
class Batch:
    """The running batch: jobs of one adapter, in the order they joined."""

    adapter: str
    jobs: list[Job] = field(default_factory=list)

    def extend(self, jobs: list[Job]) -> None:
        """Jobs that join at the next pass."""
        assert all(j.key.adapter == self.adapter for j in jobs), "a batch runs one adapter"
        self.jobs.extend(jobs)

    def filter(self, gone: list[Job]) -> None:
        """Drop the jobs that left."""
        ids = {id(j) for j in gone}
        self.jobs = [j for j in self.jobs if id(j) not in ids]

    def __len__(self) -> int:
        return len(self.jobs)

    @property
    def questions(self) -> list[str]:
        return [j.question for j in self.jobs]


@dataclass(frozen=True)
class Finished:
    """A job that left the running batch, with its result and its row's timings."""

    job: Job
    result: SolveResult  # finish_reason "cancelled" when it was dropped
    joined_at: float
    first_token_at: float | None
    prefill_s: float
    latent_s: float
    decode_s: float


@dataclass(frozen=True)
class PassStats:
    """One forward pass over the running batch."""

    rows: int
    phases: dict[str, int]  # rows per phase (prefill, latent, decode)
    kv_cache_bytes: int  # KV bytes the running rows hold after it


@dataclass
class StepOutput:
    """What one engine step did: at most one pass, the tokens it sampled, who left."""

    finished: list[Finished] = field(default_factory=list)
    tokens: list[tuple[Job, int, str]] = field(default_factory=list)
    stats: PassStats | None = None  # None when the step only dropped jobs

    @property
    def results(self) -> list[SolveResult]:
        return [f.result for f in self.finished]
