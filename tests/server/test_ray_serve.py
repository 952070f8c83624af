"""Ray Serve scale-out, live: a local Ray cluster runs 2 replicas of the built-in model behind
Ray's HTTP proxy, driven through the project's SDK.

Checks that both replicas take work, that each replica's own metrics port reports exactly
the requests that replica answered, and that killing one replica in the middle of 300
requests loses none of them at the SDK: the requests it held fail at the proxy, the SDK
retries them, the surviving replica (and the one Serve starts in its place) answers.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from server_harness import metric_samples, sample_value

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

from kava_client import AsyncClient  # noqa: E402

from server.ray_serve import REPLICA_HEADER, build_app  # noqa: E402
from server.scale_out import APP_NAME, ScaleOut  # noqa: E402
from server.settings import Settings  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
log = logging.getLogger(__name__)

REPLICAS = 2
QUESTIONS = [
    "Ben has 3 apples and buys 4 more. How many apples does Ben have?",
    "Lucy has 12 pens and gives away 5. How many pens does Lucy have left?",
    "A box holds 6 eggs. How many eggs are in 4 boxes?",
    "Max has 20 cards and shares them equally among 4 friends. How many cards does each friend get?",
]
READY_S = 300.0  # how long Serve may take to (re)start a replica on a loaded 2-core machine


def _free_port_pair() -> int:
    """A port p with p and p + 1 both free (the replicas' metrics ports on this node)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port >= 65535:
            continue
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no two consecutive free ports")


@dataclass(frozen=True)
class Cluster:
    base_url: str
    metrics_ports: tuple[int, ...]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """Ray in this process (2 logical CPUs, no dashboard), Serve's proxy on a free port, and
    the built-in model as 2 replicas of one CPU (one torch thread) each."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        http_port = probe.getsockname()[1]
    metrics_port = _free_port_pair()
    ray.init(num_cpus=REPLICAS, include_dashboard=False, object_store_memory=80 << 20, logging_level=logging.WARNING)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": http_port})
        settings = Settings(device="cpu", max_batch_size=8, log_level="warning")
        scale = ScaleOut(replicas=REPLICAS, replica_cpus=1, metrics_port=metrics_port)
        serve.run(build_app(settings, scale), name=APP_NAME, route_prefix="/")
        yield Cluster(f"http://127.0.0.1:{http_port}", tuple(metrics_port + r for r in range(REPLICAS)))
    finally:
        serve.shutdown()
        ray.shutdown()


@dataclass
class Load:
    """What the SDK's transport saw: every attempt's status and replica, in order."""

    attempts: list[tuple[int, str | None]] = field(default_factory=list)
    answers: list[tuple[str, str | None, str]] = field(default_factory=list)  # (question, answer, request id)

    async def on_response(self, response: httpx.Response) -> None:
        self.attempts.append((response.status_code, response.headers.get(REPLICA_HEADER)))

    def replicas(self, status: int = 200) -> Counter[str]:
        return Counter(r for s, r in self.attempts if s == status and r is not None)


async def _drive(base_url: str, n: int, concurrency: int, load: Load, on_progress=None) -> None:
    """`n` latent solves through the SDK, `concurrency` at a time; each call must return an answer."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    http = httpx.AsyncClient(limits=limits, timeout=120.0, event_hooks={"response": [load.on_response]})
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int, client: AsyncClient) -> None:
        question = QUESTIONS[i % len(QUESTIONS)]
        async with gate:
            result = await client.solve(question, mode="latent")
        load.answers.append((question, result.answer, result.id))
        if on_progress is not None:
            await on_progress(len(load.answers))

    async with http, AsyncClient(base_url=base_url, http_client=http) as client:
        await asyncio.gather(*(one(i, client) for i in range(n)))


def _scrape(port: int) -> tuple[str, dict[str, list]]:
    """One replica's own /metrics (its metrics port): its replica id and its samples."""
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10.0)
    assert response.status_code == 200, f"replica metrics on port {port}: {response.status_code}"
    return response.headers[REPLICA_HEADER], metric_samples(response.text)


def _ok_counts(ports: tuple[int, ...]) -> dict[str, float]:
    """Replica id -> latent requests it answered, by its own metrics."""
    out = {}
    for port in ports:
        replica, samples = _scrape(port)
        out[replica] = sample_value(samples["kava_requests"], "kava_requests_total", outcome="ok", mode="latent")
    return out


def _running(port: int) -> float:
    """The replica's `kava_num_requests_running`: requests in its engine's batch right now."""
    _, samples = _scrape(port)
    return sample_value(samples["kava_num_requests_running"], "kava_num_requests_running")


def _replicas_up(ports: tuple[int, ...], gone: str | None = None) -> dict[int, str]:
    """Wait until every metrics port answers /health 200 from a distinct replica other than
    `gone` (Serve notices a killed replica at its next health check, then starts another);
    port -> replica id."""
    deadline = time.monotonic() + READY_S
    seen: dict[int, str] = {}
    while time.monotonic() < deadline:
        seen = {}
        for port in ports:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5.0)
            except httpx.TransportError:
                continue
            if response.status_code == 200:
                seen[port] = response.headers[REPLICA_HEADER]
        ids = set(seen.values())
        if len(seen) == len(ports) and len(ids) == len(ports) and gone not in ids:
            return seen
        time.sleep(0.5)
    raise AssertionError(f"the replicas' metrics ports did not all come up (gone: {gone}): {seen}")


def test_each_replica_takes_work_and_its_metrics_port_counts_exactly_its_requests(cluster):
    _replicas_up(cluster.metrics_ports)
    before = _ok_counts(cluster.metrics_ports)
    assert len(before) == REPLICAS, f"two metrics ports, one replica: {before}"
    load = Load()
    asyncio.run(_drive(cluster.base_url, 48, 8, load))

    served = load.replicas()
    assert sum(served.values()) == 48 and not [s for s, _ in load.attempts if s != 200]
    assert set(served) == set(before), f"both replicas answer through the proxy: {served}"
    after = _ok_counts(cluster.metrics_ports)
    counted = {r: after[r] - before[r] for r in after}
    log.info("answers by replica (X-Kava-Replica) %s; by each replica's own metrics %s", dict(served), counted)
    assert counted == dict(served)
    # one request id per response, even though Ray's proxy and the app both set it
    assert all(rid and "," not in rid for _, _, rid in load.answers)


def test_300_requests_one_replica_killed_mid_load_none_lost(cluster, caplog):
    _replicas_up(cluster.metrics_ports)
    caplog.set_level(logging.INFO, logger="kava_client")
    load = Load()
    killed: list[str] = []
    served_before_kill: list[Counter[str]] = []

    async def kill_one_replica_at(done: int) -> None:
        """At the 100th answer, kill the busiest replica once its engine is running a batch."""
        if done != 100 or killed:
            return
        served_before_kill.append(load.replicas())
        victim = served_before_kill[0].most_common(1)[0][0]
        ports = await asyncio.to_thread(_replicas_up, cluster.metrics_ports)
        port = next(p for p, r in ports.items() if r == victim)
        actor = next(a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].endswith(victim))
        handle = ray.get_actor(actor["name"], namespace=actor["namespace"])
        deadline = time.monotonic() + READY_S
        while await asyncio.to_thread(_running, port) == 0:  # 100 answers in, 200 to go: it will be busy
            assert time.monotonic() < deadline, f"replica {victim} never ran a batch"
            await asyncio.sleep(0.005)
        await asyncio.to_thread(ray.kill, handle, no_restart=True)
        killed.append(victim)

    asyncio.run(_drive(cluster.base_url, 300, 16, load, on_progress=kill_one_replica_at))

    # every request answered, and answered alike wherever it ran
    assert len(load.answers) == 300
    assert all(answer is not None for _, answer, _ in load.answers)
    by_question = {q: {a for qq, a, _ in load.answers if qq == q} for q in QUESTIONS}
    assert all(len(answers) == 1 for answers in by_question.values()), by_question

    # both replicas took work before the kill, and the kill cut requests in flight ...
    assert killed, "the load ended before the kill"
    assert len(served_before_kill[0]) == REPLICAS, served_before_kill
    failed = [s for s, _ in load.attempts if s != 200]
    retries = [r for r in caplog.records if r.getMessage().startswith("retrying POST /v1/solve")]
    log.info("answers by replica %s; failed attempts %s; retries %d", load.replicas(), Counter(failed), len(retries))
    assert retries, "killing a busy replica should fail some in-flight requests"
    # ... which the SDK's retries covered: every failed attempt was tried again
    assert len(retries) >= len(failed) and all(s >= 500 for s in failed), failed

    # Serve replaces the killed replica, and the replacement serves metrics on the freed port
    _replicas_up(cluster.metrics_ports, gone=killed[0])
