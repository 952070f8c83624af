"""The engine: one thread that owns the model, a bounded queue, and iteration-level batching.

Callers (the HTTP handlers, on the event loop) only `submit` jobs, `cancel` them and read
snapshots; every tensor operation happens on the engine thread, which hands each outcome
back through the job's `done` callback.

Scheduling is per forward pass (vLLM / TGI continuous batching). The running batch holds
the jobs of one adapter — latent and CoT, any T, side by side — and each engine step is one
forward pass over it (`Runner.step`): waiting jobs of that adapter join between passes (up
to `max_batch_size` rows) and ride their prefill in the next pass while the others run
their Jacobi iterations or decode; a job that finishes leaves at the end of its pass and
frees its cache rows; a job that is cancelled (its client went away) or passes its
`deadline` leaves before the next pass. When the batch is empty, the oldest waiting job's
adapter starts the next one, once `max_batch_size` of its jobs wait or it has waited
`max_wait_ms`; a job of another adapter that has waited `max_wait_ms` stops new joins, so
the batch drains and the adapters take turns. Adapter loads/unloads (`call`) run on the
same thread between passes.

Per-token hook: a `Job` may carry `on_token(token_id, text)`. The engine thread calls it
for every answer token right after the pass that sampled it (latent slots are not
tokens), before the job's `done`; `text` is what the token adds to the answer (empty
while a multi-byte character is incomplete, and for `<eos>`), so the texts of one job
concatenate to its answer before `strip()`. The hook must return quickly and hand off to
its own thread (e.g. `loop.call_soon_threadsafe` into an asyncio.Queue — the shape SSE
streaming needs); an exception in it is logged and the job goes on.

A failing step fails only the running batch's jobs (`EngineFailure`) and the loop goes on;
an exception that escapes the loop kills the thread (`alive` turns false, /health 503) and
fails everything still queued. Stats leave as plain records through `observer`: one
`BatchRecord` per pass (rows, the phases present), one `RequestRecord` per job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from server.batch import Batch, Finished, Job, JobResult, StepOutput
from server.runner import AdapterNotLoaded, Runner
from server.stats import AdapterInfo, BatchRecord, DeviceMemory, EngineObserver, EngineSnapshot, RequestRecord

log = logging.getLogger(__name__)


class Draining(RuntimeError):
    """The server is shutting down and admits no new work."""


class NotReady(RuntimeError):
    """The model is still loading or warming up."""


class QueueFull(RuntimeError):
    """`max_queue_size` jobs are already waiting."""


class EngineDead(RuntimeError):
    """The engine thread is not running (stopped, or died)."""


class EngineFailure(RuntimeError):
    """The batch this job ran in failed; the engine itself keeps serving."""


class Cancelled(RuntimeError):
    """The job was dropped because its caller gave up (disconnect or deadline)."""


class DeadlineExceeded(Cancelled):
    """The job passed its own `deadline` in the queue or the running batch."""


Control = tuple[Callable[[Runner], Any], Future]
STEP = "step"  # _next's answer: run one pass over the running batch


class Engine:
    def __init__(
        self,
        runner: Runner | None = None,
        *,
        load: Callable[[], Runner] | None = None,
        max_batch_size: int = 32,
        max_wait_ms: float = 10.0,
        max_queue_size: int = 256,
        warmup: bool = True,
        observer: EngineObserver | None = None,
    ):
        assert (runner is None) != (load is None), "give a runner or a function that loads one"
        self._runner = runner
        self._load = load
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue_size = max_queue_size
        self.warmup = warmup
        self.observer = observer
        self.error: BaseException | None = None
        self._cv = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._batch: Batch | None = None  # the running batch (None or empty: idle)
        self._controls: deque[Control] = deque()
        self._state = "created"
        self._draining = False
        self._stopping = False
        self._kv_bytes = 0
        self._adapters: dict[str, AdapterInfo] = {}
        self.default_adapter: str | None = None
        self._loaded = threading.Event()
        self._thread: threading.Thread | None = None

    # Lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        with self._cv:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._main, name="kava-engine", daemon=True)
            self._thread.start()

    def wait_loaded(self, timeout: float | None = None) -> None:
        """Block until the model is loaded; re-raise the error if loading failed."""
        self._loaded.wait(timeout)
        if self._state == "dead":
            raise EngineDead(f"the engine failed to start: {self.error}") from self.error

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._state != "dead"

    @property
    def ready(self) -> bool:
        return self._state == "ready" and not self._draining and self.alive

    @property
    def draining(self) -> bool:
        return self._draining

    def begin_drain(self) -> None:
        """Admit nothing new; what is queued runs without waiting for fuller batches."""
        with self._cv:
            self._draining = True
            self._cv.notify_all()

    def idle(self) -> bool:
        with self._cv:
            return not (self._waiting or self._batch or self._controls)

    def stop(self, timeout: float | None = None) -> None:
        """Finish what is queued, then end the thread (waits at most `timeout` seconds)."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("engine still busy after %.1f s; leaving it behind", timeout or 0.0)

    # Callers' side -----------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        """Queue a job, or raise Draining / NotReady / EngineDead / QueueFull at once."""
        with self._cv:
            if self._draining:
                raise Draining("the server is draining and admits no new requests")
            if not self.alive:
                raise EngineDead("the engine is not running")
            if self._state != "ready":
                raise NotReady(f"the model is {self._state}")
            if len(self._waiting) >= self.max_queue_size:
                raise QueueFull(f"{len(self._waiting)} requests are waiting (KAVA_MAX_QUEUE_SIZE)")
            assert job.done is not None, "a job is queued with the callback that takes its outcome"
            job.enqueued = time.perf_counter()
            self._waiting.append(job)
            self._cv.notify_all()

    def cancel(self, job: Job) -> bool:
        """Drop a job: out of the queue now (True), or out of the running batch before
        the next pass (False)."""
        with self._cv:
            job.cancelled = True
            try:
                self._waiting.remove(job)
            except ValueError:
                return False
            return True

    def call(self, fn: Callable[[Runner], Any]) -> Future:
        """Run `fn(runner)` on the engine thread between passes."""
        fut: Future = Future()
        with self._cv:
            if not self.alive or self._stopping:
                raise EngineDead("the engine is not running")
            self._controls.append((fn, fut))
            self._cv.notify_all()
        return fut

    def adapter(self, name: str) -> AdapterInfo | None:
        return self._adapters.get(name)

    def adapters(self) -> list[AdapterInfo]:
        return list(self._adapters.values())

    def snapshot(self) -> EngineSnapshot:
        with self._cv:
            return EngineSnapshot(
                state=self._state,
                waiting=len(self._waiting),
                running=len(self._batch) if self._batch is not None else 0,
                kv_cache_bytes=self._kv_bytes,
            )

    def memory(self) -> DeviceMemory | None:
        return self._runner.memory() if self._runner is not None and self._adapters else None

    # Engine thread -----------------------------------------------------------------------
    def _main(self) -> None:
        try:
            self._state = "loading"
            if self._runner is None:
                self._runner = self._load()
            self._publish()
            self._state = "warming"
            self._loaded.set()
            if self.warmup:
                self._runner.warmup()
            self._state = "ready"
            log.info("engine ready: adapters %s, default %s", sorted(self._adapters), self.default_adapter)
            while (work := self._next()) is not None:
                if work is STEP:
                    self._run()
                else:
                    self._control(*work)
            self._state = "stopped"
        except BaseException as exc:  # anything that escapes the loop kills the engine
            self.error = exc
            self._state = "dead"
            log.critical("engine thread died: %r", exc, exc_info=exc)
            self._fail_everything(EngineDead(f"the engine died: {exc!r}"))
        finally:
            self._loaded.set()

    def _publish(self) -> None:
        self._adapters = {i.name: i for i in self._runner.infos()}
        self.default_adapter = self._runner.default

    def _next(self) -> Control | str | None:
        """Block until there is a control call or a pass to run (STEP); None = stop.
        Admits waiting jobs into the running batch on the way."""
        with self._cv:
            while True:
                if self._controls:
                    return self._controls.popleft()
                self._drop_expired()
                batch = self._batch
                if batch:
                    self._admit(batch.adapter, self.max_batch_size - len(batch))
                    return STEP
                if self._waiting:
                    head = self._waiting[0]
                    group = [j for j in self._waiting if j.key.adapter == head.key.adapter]
                    wait = head.enqueued + self.max_wait_s - time.perf_counter()
                    if len(group) >= self.max_batch_size or wait <= 0 or self._draining or self._stopping:
                        self._batch = Batch(head.key.adapter)
                        self._admit(head.key.adapter, self.max_batch_size)
                        return STEP
                    self._cv.wait(wait)
                elif self._stopping:
                    return None
                else:
                    self._kv_bytes = 0  # idle: no batch holds a cache
                    self._cv.wait()

    def _admit(self, adapter: str, room: int) -> None:
        """Move up to `room` waiting jobs of `adapter` into the running batch (oldest first),
        unless another adapter's job has waited max_wait_ms: then the batch drains."""
        if not self._waiting or room <= 0:
            return
        head = self._waiting[0]
        if head.key.adapter != adapter and time.perf_counter() - head.enqueued >= self.max_wait_s:
            return
        joining = [j for j in self._waiting if j.key.adapter == adapter][:room]
        taken = {id(j) for j in joining}
        self._waiting = deque(j for j in self._waiting if id(j) not in taken)
        self._batch.extend(joining)

    def _drop_expired(self) -> None:
        """Waiting jobs past their deadline never run."""
        now = time.perf_counter()
        gone = [j for j in self._waiting if j.expired(now)]
        if gone:
            self._waiting = deque(j for j in self._waiting if not j.expired(now))
            for job in gone:
                _settle(job, DeadlineExceeded("the request passed its deadline while it waited"))

    def _control(self, fn: Callable[[Runner], Any], fut: Future) -> None:
        if not fut.set_running_or_notify_cancel():
            return
        try:
            result = fn(self._runner)
        except Exception as exc:
            self._publish()
            fut.set_exception(exc)
        else:
            self._publish()  # before the caller wakes, so it sees the change
            fut.set_result(result)

    def _run(self) -> None:
        batch = self._batch
        try:
            self._step(batch)
        except BaseException as exc:  # escapes only to kill the thread: tell this batch first
            _settle_all(batch.jobs, EngineDead(f"the engine died: {exc!r}"))
            with self._cv:
                self._batch = None
            raise

    def _step(self, batch: Batch) -> None:
        try:
            out: StepOutput = self._runner.step(batch)
        except Exception as exc:
            if isinstance(exc, AdapterNotLoaded):  # unloaded while these jobs waited or ran
                outcome: BaseException = exc
            else:
                log.exception("step over %d jobs of %s failed (request ids %s)", len(batch), batch.adapter,
                              [j.id for j in batch.jobs])  # fmt: skip
                outcome = EngineFailure(f"the batch failed: {type(exc).__name__}: {exc}")
            self._runner.recover()
            with self._cv:
                jobs, self._batch = batch.jobs, None
            _settle_all(jobs, outcome)
            return
        st = out.stats
        if st is not None:
            self._kv_bytes = st.kv_cache_bytes
            if self.observer is not None:
                passes = {phase: 1 for phase, n in st.phases.items() if n}  # phases the pass carried
                self.observer.record_batch(BatchRecord(st.rows, passes))
        for job, token, text in out.tokens:
            if job.on_token is not None:
                try:
                    job.on_token(token, text)
                except Exception:
                    log.warning("on_token of request %s failed", job.id, exc_info=True)
        now = time.perf_counter()
        settled = [(f.job, self._outcome(f, batch.adapter, now)) for f in out.finished]
        with self._cv:
            batch.filter([f.job for f in out.finished])
            if not batch:
                self._kv_bytes = 0
        # metrics first (in _outcome), then answers: a scrape right after a response counts it
        for job, outcome in settled:
            _settle(job, outcome)

    def _outcome(self, f: Finished, adapter: str, now: float) -> JobResult | BaseException:
        job, res = f.job, f.result
        if res.finish_reason == "cancelled":
            if job.expired(now) and not job.cancelled:
                return DeadlineExceeded("the request passed its deadline while it ran")
            return Cancelled("dropped: the client went away")
        first = f.first_token_at if f.first_token_at is not None else now
        jr = JobResult(
            result=res,
            queue_s=f.joined_at - job.arrival,
            ttft_s=first - job.arrival,
            prefill_s=f.prefill_s,
            latent_s=f.latent_s,
            decode_s=f.decode_s,
            total_s=now - job.arrival,
        )
        if self.observer is not None:
            self.observer.record_request(
                RequestRecord(
                    adapter=adapter,
                    mode=job.key.mode,
                    queue_s=jr.queue_s,
                    ttft_s=jr.ttft_s,
                    prefill_s=jr.prefill_s,
                    latent_s=jr.latent_s,
                    decode_s=jr.decode_s,
                    prompt_tokens=res.prompt_tokens,
                    latent_tokens=res.latent_tokens,
                    generated_tokens=res.generated_tokens,
                    kv_cache_bytes=res.kv_cache_bytes,
                    forward_passes=res.forward_passes,
                )
            )
        return jr

    def _fail_everything(self, exc: BaseException) -> None:
        with self._cv:
            jobs = list(self._waiting) + (self._batch.jobs if self._batch is not None else [])
            self._waiting.clear()
            self._batch = None
            controls = list(self._controls)
            self._controls.clear()
        _settle_all(jobs, exc)
        for _, fut in controls:
            if fut.set_running_or_notify_cancel():
                fut.set_exception(exc)


def _settle(job: Job, outcome: JobResult | BaseException) -> None:
    try:
        job.done(outcome)
    except Exception:  # e.g. the caller's event loop is closed; nobody is left to tell
        log.warning("could not hand the outcome of request %s back", job.id, exc_info=True)


def _settle_all(jobs: list[Job], exc: BaseException) -> None:
    for job in jobs:
        _settle(job, exc)
