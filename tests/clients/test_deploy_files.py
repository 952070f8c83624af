"""Deployment files: both compose variants validate, keep in step, and wire Prometheus to /metrics.

`docker compose config` (or the older `docker-compose config`) validates when a compose CLI
is installed; everything else reads the YAML and needs nothing. Nothing here starts a container.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
GPU_FILE, CPU_FILE = "docker-compose.yml", "docker-compose.cpu.yml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"


def _compose_cli() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def _load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


@pytest.mark.parametrize("name", [GPU_FILE, CPU_FILE])
def test_compose_config_validates(name):
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no compose CLI: neither `docker compose` nor `docker-compose` is installed")
    result = subprocess.run([*cli, "-f", name, "config", "-q"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{' '.join(cli)} -f {name} config: {result.stderr}"


def test_gpu_is_reserved_by_default_and_not_in_the_cpu_variant():
    devices = _load(GPU_FILE)["services"]["kava"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert "deploy" not in _load(CPU_FILE)["services"]["kava"]


def test_cpu_variant_is_the_default_minus_the_gpu_reservation():
    expected = copy.deepcopy(_load(GPU_FILE))
    del expected["services"]["kava"]["deploy"]
    assert _load(CPU_FILE) == expected, f"edit {GPU_FILE} and {CPU_FILE} together"


@pytest.mark.parametrize("name", [GPU_FILE, CPU_FILE])
def test_kava_service_follows_serving_md(name):
    kava = _load(name)["services"]["kava"]
    assert kava["build"]["context"] == "."
    assert kava["ipc"] == "host"
    assert any(p.endswith(":8000") for p in kava["ports"])
    assert "./models:/models:ro" in kava["volumes"]
    assert any(v.endswith(":/cache/huggingface") for v in kava["volumes"])
    env = kava["environment"]
    assert "HF_HOME=/cache/huggingface" in env and {"HF_TOKEN", "HF_HUB_OFFLINE", "KAVA_API_KEY"} <= set(env)
    check = kava["healthcheck"]
    assert "/health" in " ".join(check["test"]) and check["start_period"] == "10m"
    assert kava["stop_grace_period"] == "60s"


@pytest.mark.parametrize("name", [GPU_FILE, CPU_FILE])
def test_prometheus_waits_for_a_healthy_server_and_mounts_its_config(name):
    prometheus = _load(name)["services"]["prometheus"]
    assert prometheus["image"].startswith("prom/prometheus:v")
    assert prometheus["depends_on"] == {"kava": {"condition": "service_healthy"}}
    assert "9090:9090" in prometheus["ports"]
    mounted = [v for v in prometheus["volumes"] if v.startswith("./deploy/prometheus/prometheus.yml:")]
    assert mounted == ["./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]


def test_prometheus_scrapes_kava_metrics_every_5s():
    (job,) = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]
    assert job["job_name"] == "kava" and job["scrape_interval"] == "5s"
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job["static_configs"][0]["targets"] == ["kava:8000"]


def test_promtool_accepts_the_prometheus_config():
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (Debian package `prometheus`)")
    result = subprocess.run(["promtool", "check", "config", str(PROMETHEUS_CONFIG)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_installs_dependencies_before_the_code():
    lines = [line.split()[0:2] for line in (ROOT / "Dockerfile").read_text().splitlines() if line.strip()]
    instructions = [" ".join(words) for words in lines if words and not words[0].startswith("#")]
    first_code_copy = instructions.index("COPY kava")
    assert instructions.index("COPY pyproject.toml") < first_code_copy
    dependency_install = next(i for i, x in enumerate(instructions) if x.startswith("RUN python"))
    assert dependency_install < first_code_copy
    user = next(x for x in instructions if x.startswith("USER "))
    assert not user.split()[1].startswith(("0", "root"))
