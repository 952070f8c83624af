"""The engine: one thread that owns the model, a bounded queue, and dynamic batching.

Callers (the HTTP handlers, on the event loop) only `submit` jobs, `cancel` them and
read snapshots; every tensor operation happens on the engine thread, which hands each
outcome back through the job's `done` callback. A batch forms from the oldest waiting
job's key (adapter, mode, T) when `max_batch_size` such jobs wait or the oldest has waited
`max_wait_ms`. Adapter loads/unloads (`call`) run on the same thread between batches.

A failing batch fails only its own jobs (`EngineFailure`) and the loop goes on; an
exception that escapes the loop kills the thread (`alive` turns false, /health 503) and
fails everything still queued. Stats leave as plain records through `observer`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from server.batch import Batch, Job, JobResult
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


Control = tuple[Callable[[Runner], Any], Future]


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
        self._running: list[Job] = []
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
            return not (self._waiting or self._running or self._controls)

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
            job.enqueued = time.perf_counter()
            self._waiting.append(job)
            self._cv.notify_all()

    def cancel(self, job: Job) -> bool:
        """Drop a job: out of the queue now (True), or out of its running batch at the
        next decode step (False)."""
        with self._cv:
            job.cancelled = True
            try:
                self._waiting.remove(job)
            except ValueError:
                return False
            return True

    def call(self, fn: Callable[[Runner], Any]) -> Future:
        """Run `fn(runner)` on the engine thread between batches."""
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
                draining=self._draining,
                waiting=len(self._waiting),
                running=len(self._running),
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
                if isinstance(work, Batch):
                    self._run(work)
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

    def _next(self) -> Batch | Control | None:
        """Block until there is a control call or a batch to run; None = stop."""
        with self._cv:
            while True:
                if self._controls:
                    return self._controls.popleft()
                if self._waiting:
                    head = self._waiting[0]
                    group = [j for j in self._waiting if j.key == head.key][: self.max_batch_size]
                    wait = head.enqueued + self.max_wait_s - time.perf_counter()
                    if len(group) >= self.max_batch_size or wait <= 0 or self._draining or self._stopping:
                        taken = {id(j) for j in group}
                        self._waiting = deque(j for j in self._waiting if id(j) not in taken)
                        self._running = group
                        return Batch.from_jobs(group)
                    self._cv.wait(wait)
                elif self._stopping:
                    return None
                else:
                    self._kv_bytes = 0  # idle: no batch holds a cache
                    self._cv.wait()

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

    def _run(self, batch: Batch) -> None:
        batch = batch.filter()
        try:
            if batch.jobs:
                self._step(batch)
        except BaseException as exc:  # escapes only to kill the thread: tell this batch first
            _settle_all(batch.jobs, EngineDead(f"the engine died: {exc!r}"))
            raise
        finally:
            with self._cv:
                self._running = []

    def _step(self, batch: Batch) -> None:
        start = time.perf_counter()
        try:
            out = self._runner.step(batch)
        except AdapterNotLoaded as exc:  # unloaded while these jobs waited
            _settle_all(batch.jobs, exc)
            return
        except Exception as exc:
            ids = [j.id for j in batch.jobs]
            log.exception("batch of %d failed (%s; request ids %s)", len(batch), batch.key, ids)
            self._runner.recover()
            _settle_all(batch.jobs, EngineFailure(f"the batch failed: {type(exc).__name__}: {exc}"))
            return
        end = time.perf_counter()
        st = out.stats
        self._kv_bytes = st.peak_kv_bytes
        key = batch.key
        if self.observer is not None:
            self.observer.record_batch(
                BatchRecord(len(batch), key.adapter, key.mode, dict(st.passes), st.peak_kv_bytes, st.total_s)
            )
        finished = []
        for job, res in zip(batch.jobs, out.results):
            if job.cancelled or res.finish_reason == "cancelled":
                _settle(job, Cancelled("dropped: the client went away"))
                continue
            jr = JobResult(
                result=res,
                queue_s=start - job.arrival,
                ttft_s=start - job.arrival + st.first_token_s,
                prefill_s=st.prefill_s,
                latent_s=st.latent_s,
                decode_s=st.decode_s,
                total_s=end - job.arrival,
                batch_size=len(batch),
            )
            if self.observer is not None:
                self.observer.record_request(
                    RequestRecord(
                        adapter=key.adapter,
                        mode=key.mode,
                        queue_s=jr.queue_s,
                        ttft_s=jr.ttft_s,
                        prefill_s=jr.prefill_s,
                        latent_s=jr.latent_s,
                        decode_s=jr.decode_s,
                        prompt_tokens=res.prompt_tokens,
                        latent_tokens=res.latent_tokens,
                        generated_tokens=res.generated_tokens,
                        kv_cache_bytes=res.kv_cache_bytes,
                    )
                )
            finished.append((job, jr))
        # metrics first, then answers: a scrape right after a response already counts it
        for job, jr in finished:
            _settle(job, jr)

    def _fail_everything(self, exc: BaseException) -> None:
        with self._cv:
            jobs = list(self._waiting) + self._running
            self._waiting.clear()
            self._running = []
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
