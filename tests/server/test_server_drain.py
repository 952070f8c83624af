"""SIGTERM drains a real `kava serve` process: requests in flight all finish with 200,
new ones are refused (503 + Retry-After while it drains, or no connection once it has
gone), /ready turns 503, and the process exits 0."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from server_harness import QUESTIONS, metric_samples, run, sample_value


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _until_ready(client: httpx.AsyncClient, proc: subprocess.Popen, log_path) -> None:
    end = time.monotonic() + 90
    while time.monotonic() < end:
        assert proc.poll() is None, f"server exited early:\n{log_path.read_text()}"
        try:
            if (await client.get("/ready")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.2)
    raise TimeoutError(f"server never became ready:\n{log_path.read_text()}")


@pytest.mark.e2e
def test_sigterm_drains_in_flight_requests_then_exits_0(adapter_dir, tiny_bases, tmp_path):
    port = _free_port()
    log_path = tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "kava_cli.main", "serve", "--adapter", f"tiny={adapter_dir}"]
    cmd += ["--base-model", str(tiny_bases["llama"]), "--port", str(port), "--max-batch-size", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "KAVA_MAX_WAIT_MS": "0"}
    env["OMP_NUM_THREADS"] = "1"  # as conftest's one_torch_thread, for the same reason
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        statuses, refused, ready_status = run(_scenario(f"http://127.0.0.1:{port}", proc, log_path))
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = log_path.read_text()
    assert statuses == [200] * 3, output
    assert refused in ("503", "gone"), output
    assert ready_status in (503, "gone"), output
    assert code == 0, output
    assert "draining" in output


async def _scenario(url: str, proc: subprocess.Popen, log_path):
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        await _until_ready(client, proc, log_path)
        body = {"max_new_tokens": 150}
        flights = [asyncio.ensure_future(client.post("/v1/solve", json={**body, "question": q})) for q in QUESTIONS[:3]]

        async def busy() -> bool:
            m = metric_samples((await client.get("/metrics")).text)
            running = sample_value(m["kava_num_requests_running"], "kava_num_requests_running")
            waiting = sample_value(m["kava_num_requests_waiting"], "kava_num_requests_waiting")
            return running == 1 and waiting >= 1

        while not await busy():
            await asyncio.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        async with httpx.AsyncClient(base_url=url, timeout=10) as fresh:  # new connections
            try:
                while (ready := await fresh.get("/ready")).status_code == 200:
                    await asyncio.sleep(0.005)
                ready_status = ready.status_code
                late = await fresh.post("/v1/solve", json={"question": QUESTIONS[5]})
                assert late.status_code == 503 and late.headers["retry-after"], late.text
                refused = "503"
            except httpx.TransportError:
                refused = ready_status = "gone"
        replies = await asyncio.gather(*flights)
    return [r.status_code for r in replies], refused, ready_status
