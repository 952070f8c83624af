"""The engine without HTTP, over a fake runner whose jobs need `max_new_tokens` passes:
iteration-level batching (latent and CoT share passes, new jobs join between passes, the
batch never exceeds max_batch_size, adapters take turns), cancel and deadline take effect
before the next pass, the per-token hook, draining, and a failing step failing alone."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from kava.generate import SolveResult
from server.batch import BatchKey, Finished, Job, JobResult, PassStats, StepOutput
from server.engine import Cancelled, DeadlineExceeded, Draining, Engine, EngineFailure, QueueFull
from server.stats import AdapterInfo, DeviceMemory

LATENT, COT = BatchKey("a", "latent", 3), BatchKey("a", "cot", None)


class FakeRunner:
    """Each job takes `max_new_tokens` passes and emits one token per pass."""

    default = "a"

    def __init__(self):
        self.passes: list[tuple[str, list[str]]] = []  # (adapter, questions) per forward pass
        self.taken: Counter[int] = Counter()
        self.gate = threading.Event()
        self.gate.set()
        self.before_pass = lambda: None
        self.pass_s = 0.0

    def step(self, batch):
        self.gate.wait(10)
        self.before_pass()
        time.sleep(self.pass_s)
        out, now = StepOutput(), time.perf_counter()
        live = []
        for job in batch.jobs:
            if job.cancelled or job.expired(now):
                dropped = SolveResult("", None, "cancelled", 0, 0, 0, 0, 0)
                out.finished.append(Finished(job, dropped, now, None, 0.0, 0.0, 0.0))
            else:
                live.append(job)
        if not live:
            return out
        if any(j.question == "fail" for j in live):
            raise RuntimeError("boom")
        self.passes.append((batch.adapter, [j.question for j in live]))
        for job in live:
            n = self.taken[id(job)] = self.taken[id(job)] + 1
            out.tokens.append((job, n, f"<{n}>"))
            if n >= job.max_new_tokens:
                result = SolveResult(job.question.upper(), None, "length", 1, 0, n, n, 8)
                out.finished.append(Finished(job, result, now, now, 0.0, 0.0, 0.0))
        out.stats = PassStats(len(live), {"decode": len(live)}, 8 * len(live))
        return out

    def infos(self):
        return [AdapterInfo("a", "base", 3, 3, "float32", "cpu"), AdapterInfo("b", "base", 3, 3, "float32", "cpu")]

    def warmup(self):
        pass

    def memory(self):
        return DeviceMemory("cpu", 1, 1)

    def recover(self):
        pass


class Outcomes:
    def __init__(self):
        self.got: dict[str, object] = {}
        self.tokens: dict[str, list[tuple[int, str]]] = {}
        self.cv = threading.Condition()

    def job(self, question: str, key: BatchKey = LATENT, passes: int = 4, **kw) -> Job:
        def done(outcome):
            with self.cv:
                self.got[question] = outcome
                self.cv.notify_all()

        def on_token(token: int, text: str):
            assert question not in self.got, "a token after done"
            self.tokens.setdefault(question, []).append((token, text))

        return Job(question, question, key, passes, False, time.perf_counter(), done, on_token=on_token, **kw)

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


def test_latent_and_cot_share_passes_and_adapters_take_turns():
    runner, out = FakeRunner(), Outcomes()
    runner.gate.clear()
    engine = _engine(runner, max_batch_size=8, max_wait_ms=200)
    other = BatchKey("b", "latent", 3)
    jobs = [("l1", LATENT), ("c1", COT), ("b1", other), ("t0", BatchKey("a", "latent", 0)), ("c2", COT)]
    for q, key in jobs:
        engine.submit(out.job(q, key, passes=3))
    runner.gate.set()
    got = out.wait(5)
    engine.stop(5)
    assert runner.passes[0] == ("a", ["l1", "c1", "t0", "c2"])  # one pass, both modes, any T
    adapters = [a for a, _ in runner.passes]
    assert adapters == ["a"] * 3 + ["b"] * 3, "a running batch holds one adapter; the next waits its turn"
    assert all(isinstance(v, JobResult) and v.result.text == q.upper() for q, v in got.items())


def test_jobs_join_between_passes_up_to_max_batch_size():
    runner, out = FakeRunner(), Outcomes()
    engine = _engine(runner, max_batch_size=2, max_wait_ms=0)
    submitted = threading.Event()

    def later():  # the second and third jobs arrive while the first decodes
        if not runner.passes and not submitted.is_set():  # during the first pass
            submitted.set()
            engine.submit(out.job("second", passes=2))
            engine.submit(out.job("third", passes=2))

    runner.before_pass = later
    engine.submit(out.job("first", passes=4))
    got = out.wait(3)
    engine.stop(5)
    assert [qs for _, qs in runner.passes] == [
        ["first"],
        ["first", "second"],  # joined at the next pass, the first one still decoding
        ["first", "second"],  # full: the third waits
        ["first", "third"],  # a row freed: the third joins
        ["third"],
    ]
    assert all(isinstance(v, JobResult) for v in got.values())
    assert [t for t, _ in out.tokens["first"]] == [1, 2, 3, 4]  # every token, in order, before done


def test_cancel_and_deadline_take_effect_before_the_next_pass():
    runner, out = FakeRunner(), Outcomes()
    runner.gate.clear()
    runner.pass_s = 0.005
    engine = _engine(runner, max_batch_size=4, max_wait_ms=0, max_queue_size=3)
    running = out.job("running", passes=200)
    expiring = out.job("expiring", passes=200, deadline=time.perf_counter() + 0.2)
    engine.submit(running)
    engine.submit(expiring)
    while engine.snapshot().running < 2:
        time.sleep(0.001)
    queued = out.job("queued", BatchKey("b", "latent", 3))  # another adapter: waits its turn
    engine.submit(queued)
    with pytest.raises(QueueFull):
        for i in range(3):
            engine.submit(out.job(f"overflow{i}", BatchKey("b", "latent", 3)))
    assert engine.cancel(queued) is True  # out of the queue: it never runs
    runner.gate.set()
    time.sleep(0.05)
    assert engine.cancel(running) is False  # running: it leaves before the next pass
    got = out.wait(4)
    engine.begin_drain()
    with pytest.raises(Draining):
        engine.submit(out.job("late"))
    engine.stop(5)
    assert isinstance(got["running"], Cancelled) and not isinstance(got["running"], DeadlineExceeded)
    assert isinstance(got["expiring"], DeadlineExceeded)
    assert "queued" not in got and all(q != "queued" for _, qs in runner.passes for q in qs)
    assert len(out.tokens["running"]) < 200 and len(out.tokens["expiring"]) < 200


def test_a_failing_step_fails_its_batch_alone():
    runner, out = FakeRunner(), Outcomes()
    engine = _engine(runner, max_batch_size=1, max_wait_ms=0)
    engine.submit(out.job("fail"))
    engine.submit(out.job("fine"))
    got = out.wait(2)
    assert engine.alive
    engine.stop(5)
    assert isinstance(got["fail"], EngineFailure) and "boom" in str(got["fail"])
    assert isinstance(got["fine"], JobResult)


def test_a_broken_token_hook_does_not_stop_the_job():
    runner, out = FakeRunner(), Outcomes()
    engine = _engine(runner, max_batch_size=2, max_wait_ms=0)
    job = out.job("q", passes=3)
    job.on_token = lambda token, text: 1 / 0
    engine.submit(job)
    got = out.wait(1)
    engine.stop(5)
    assert isinstance(got["q"], JobResult)


def test_the_model_runner_streams_tokens_and_mixes_modes(runner, tiny_model):
    """Over the real runner: latent and CoT jobs in one running batch answer what they answer
    alone, and each job's on_token texts add up to its answer."""
    from server_harness import QUESTIONS

    from kava.generate import solve_batch

    out = Outcomes()
    streamed: dict[str, list[str]] = {}
    engine = _engine(runner, max_batch_size=8, max_wait_ms=50)
    keys = [BatchKey("tiny", "latent", 3), BatchKey("tiny", "cot", None), BatchKey("tiny", "latent", 1)]
    for i, q in enumerate(QUESTIONS[:6]):
        job = out.job(q, keys[i % 3], passes=6)
        job.on_token = lambda token, text, q=q: streamed.setdefault(q, []).append(text)
        engine.submit(job)
    got = out.wait(6)
    engine.stop(5)
    for i, q in enumerate(QUESTIONS[:6]):
        key = keys[i % 3]
        alone = solve_batch(tiny_model, [q], mode=key.mode, num_iterations=key.num_iterations, max_new_tokens=6)
        assert got[q].result.text == alone.results[0].text
        assert "".join(streamed[q]).strip() == got[q].result.text
        assert len(streamed[q]) == got[q].result.generated_tokens
