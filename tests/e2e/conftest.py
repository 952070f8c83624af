"""End-to-end fixtures, shared by every test here (one server and one Prometheus per session,
started only when a test asks for them): `kava serve` in its own process, configured the way
the compose stack configures its container, and a real Prometheus scraping it with the
stack's own scrape config."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from e2e_harness import PROMETHEUS, PROMTOOL, ROOT, SERVER_START_S, free_port, start, stop, tail, wait_for
from tiny import make_model

from kava.adapters import save_adapter


def container_env(models: Path, port: int) -> dict[str, str]:
    """The variables kava.env sets (KAVA_ADAPTER_DIR pointing at `models` instead of /models),
    with the loopback address and `port` in place of the image's 0.0.0.0:8000."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAVA_")}
    for line in (ROOT / "kava.env").read_text().splitlines():
        if line.startswith("KAVA_"):
            name, _, value = line.partition("=")
            env[name] = value
    assert env.get("KAVA_ADAPTER_DIR") == "/models", "kava.env no longer serves /models"
    env.update(KAVA_ADAPTER_DIR=str(models), KAVA_HOST="127.0.0.1", KAVA_PORT=str(port), KAVA_DEVICE="cpu")
    env.update(KAVA_LOG_LEVEL="warning", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.update(HF_HUB_OFFLINE="1")
    return env


@pytest.fixture(scope="session")
def kava_server(tiny_bases, tmp_path_factory) -> Iterator[str]:
    """`kava serve` with no arguments (the image's entry point) and kava.env's variables, over
    a models directory holding two tiny adapters, `tiny` (the default: first by name) and
    `tiny-b`, on a free loopback port; yields its base URL."""
    root = tmp_path_factory.mktemp("e2e-kava")
    save_adapter(make_model(tiny_bases["llama"], seed=1), root / "models" / "tiny")
    save_adapter(make_model(tiny_bases["llama"], seed=2), root / "models" / "tiny-b")
    port = free_port()
    env = container_env(root / "models", port)
    cmd = [sys.executable, "-m", "kava_cli.main", "serve"]
    log = root / "kava-serve.log"
    proc = start(cmd, log, env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for("kava serve /ready", lambda: httpx.get(f"{url}/ready").status_code == 200, SERVER_START_S, proc, log)
        yield url
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def prometheus(kava_server, tmp_path_factory) -> Iterator[str]:
    """Prometheus scraping `kava_server` every second with the compose stack's job
    (`deploy/prometheus/prometheus.yml`, target and interval replaced); yields its URL."""
    root = tmp_path_factory.mktemp("e2e-prometheus")
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    (job,) = config["scrape_configs"]
    job.update(scrape_interval="1s", scrape_timeout="1s")
    job["static_configs"][0]["targets"] = [kava_server.removeprefix("http://")]
    config_file = root / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    checked = subprocess.run([PROMTOOL, "check", "config", str(config_file)], capture_output=True, text=True)
    assert checked.returncode == 0, f"promtool check config:\n{checked.stdout}{checked.stderr}"
    port = free_port()
    cmd = [PROMETHEUS, f"--config.file={config_file}", f"--storage.tsdb.path={root / 'data'}"]
    cmd += [f"--web.listen-address=127.0.0.1:{port}"]
    log = root / "prometheus.log"
    proc = start(cmd, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for("prometheus /-/ready", lambda: httpx.get(f"{url}/-/ready").status_code == 200, 30, proc, log)
        yield url
    finally:
        stop(proc)
        if proc.returncode not in (0, -15):
            print(f"prometheus exited with {proc.returncode}:\n{tail(log)}")
