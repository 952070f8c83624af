"""The engine without HTTP, over a fake runner: batches form by key, size and wait; a
cancelled job never runs; draining flushes partial batches; a failing batch fails alone."""

from __future__ import annotations

import threading
import time

import pytest

from kava.generate import BatchOutput, BatchStats, SolveResult
from server.batch import BatchKey, Job, JobResult
from server.engine import Draining, Engine, EngineFailure, QueueFull
from server.stats import AdapterInfo, DeviceMemory

LATENT = BatchKey("a", "latent", 3)


class FakeRunner:
    default = "a"

    def __init__(self):
        self.batches: list[tuple[BatchKey, list[str]]] = []
        self.gate = threading.Event()
        self.gate.set()

    def step(self, batch):
        self.gate.wait(10)
        self.batches.append((batch.key, batch.questions))
        if "fail" in batch.questions:
            raise RuntimeError("boom")
        results = [SolveResult(q.upper(), None, "stop", 1, 0, 1, 1, 8) for q in batch.questions]
        return BatchOutput(results, BatchStats(batch_size=len(batch), mode=batch.key.mode))

    def infos(self):
        return [AdapterInfo("a", "base", 3, 3, "float32", "cpu")]

    def warmup(self):
        pass

    def memory(self):
        return DeviceMemory("cpu", 1, 1)

    def recover(self):
        pass


class Outcomes:
    def __init__(self):
        self.got: dict[str, object] = {}
        self.cv = threading.Condition()

    def job(self, question: str, key: BatchKey = LATENT) -> Job:
        def done(outcome):
            with self.cv:
                self.got[question] = outcome
                self.cv.notify_all()

        return Job(question, question, key, 4, False, time.perf_counter(), done)

    def wait(self, n: int) -> dict[str, object]:
        with self.cv:
            assert self.cv.wait_for(lambda: len(self.got) >= n, 10), self.got
            return dict(self.got)


def _engine(runner, **kw) -> Engine:
    engine = Engine(runner, warmup=False, **kw)
    engine.start()
    engine.wait_loaded()
    while not engine.ready:
        time.sleep(0.001)
    return engine


def test_keys_share_the_queue_not_the_batch():
    runner, out = FakeRunner(), Outcomes()
    engine = _engine(runner, max_batch_size=8, max_wait_ms=200)
    cot, t0 = BatchKey("a", "cot", None), BatchKey("a", "latent", 0)
    for q, key in [("l1", LATENT), ("c1", cot), ("l2", LATENT), ("t1", t0), ("c2", cot), ("l3", LATENT)]:
        engine.submit(out.job(q, key))
    got = out.wait(6)
    engine.stop(5)
    assert sorted(runner.batches, key=str) == sorted(
        [(LATENT, ["l1", "l2", "l3"]), (cot, ["c1", "c2"]), (t0, ["t1"])], key=str
    )
    assert all(isinstance(v, JobResult) and v.result.text == q.upper() for q, v in got.items())


def test_a_batch_closes_at_max_batch_size():
    runner, out = FakeRunner(), Outcomes()
    runner.gate.clear()
    engine = _engine(runner, max_batch_size=4, max_wait_ms=10_000)
    for i in range(10):
        engine.submit(out.job(f"q{i}"))
    runner.gate.set()
    engine.begin_drain()  # the last, partial batch runs without waiting the full 10 s
    out.wait(10)
    engine.stop(5)
    assert [len(qs) for _, qs in runner.batches] == [4, 4, 2]


def test_cancelled_job_never_runs_and_the_queue_is_bounded():
    runner, out = FakeRunner(), Outcomes()
    runner.gate.clear()
    engine = _engine(runner, max_batch_size=1, max_wait_ms=0, max_queue_size=2)
    engine.submit(out.job("running"))
    while engine.snapshot().running == 0:
        time.sleep(0.001)
    gone, kept = out.job("gone"), out.job("kept")
    engine.submit(gone)
    engine.submit(kept)
    with pytest.raises(QueueFull):
        engine.submit(out.job("overflow"))
    assert engine.cancel(gone) is True
    runner.gate.set()
    got = out.wait(2)
    engine.begin_drain()
    with pytest.raises(Draining):
        engine.submit(out.job("late"))
    engine.stop(5)
    assert sorted(got) == ["kept", "running"]
    assert [qs for _, qs in runner.batches] == [["running"], ["kept"]]


def test_a_failing_batch_fails_alone():
    runner, out = FakeRunner(), Outcomes()
    engine = _engine(runner, max_batch_size=1, max_wait_ms=0)
    engine.submit(out.job("fail"))
    engine.submit(out.job("fine"))
    got = out.wait(2)
    assert engine.alive
    engine.stop(5)
    assert isinstance(got["fail"], EngineFailure) and "boom" in str(got["fail"])
    assert isinstance(got["fine"], JobResult)
