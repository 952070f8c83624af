"""Deployment files: both compose variants validate and keep in step, every `KAVA_*` setting
reaches the container (kava.env lists each with its real default), the image's entry point
takes appended flags, Prometheus scrapes /metrics, and Grafana is provisioned with the
datasource its dashboard names.

`docker compose config` (or the older `docker-compose config`) validates when a compose CLI
is installed; everything else reads the files and needs nothing. Nothing here starts a container.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import get_args

import pytest
import yaml
from pydantic import SecretStr

from server.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
GPU_FILE, CPU_FILE = "docker-compose.yml", "docker-compose.cpu.yml"
ENV_FILE = ROOT / "kava.env"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "kava.json"
ENV_LINE = re.compile(r"^(#\s*)?(KAVA_[A-Z0-9_]+)=(.*)$")
SECRETS = {f"KAVA_{name.upper()}" for name, f in Settings.model_fields.items() if SecretStr in get_args(f.annotation)}


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


def _env_lines(text: str) -> dict[str, tuple[bool, str]]:
    """kava.env: variable -> (set, value); a commented `# KAVA_X=v` line documents v."""
    out = {}
    for line in text.splitlines():
        if m := ENV_LINE.match(line.strip()):
            out[m.group(2)] = (m.group(1) is None, m.group(3))
    return out


def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def _image_env() -> dict[str, str]:
    env = {}
    for instruction, args in _dockerfile():
        if instruction == "ENV":
            env.update(dict(word.split("=", 1) for word in shlex.split(args)))
    return env


def _seconds(duration: str) -> float:
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([hms])", duration))


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
    assert "ipc" not in kava and "shm_size" not in kava, "nothing in the server uses shared memory"
    assert any(p.endswith(":8000") for p in kava["ports"])
    assert "./models:/models:ro" in kava["volumes"]
    assert any(v.endswith(":/cache/huggingface") for v in kava["volumes"])
    assert kava["env_file"] == ["kava.env"]
    env = kava["environment"]
    assert "HF_HOME=/cache/huggingface" in env and {"HF_TOKEN", "HF_HUB_OFFLINE"} <= set(env)
    assert SECRETS and SECRETS <= set(env), "API keys come from the host's environment"
    check = kava["healthcheck"]
    assert "/health" in " ".join(check["test"]) and check["start_period"] == "10m"
    drain = Settings.model_fields["drain_timeout_s"].default
    assert _seconds(kava["stop_grace_period"]) > drain, "SIGKILL must not cut the drain short"


def test_kava_env_lists_every_setting_with_its_real_default(monkeypatch, tmp_path):
    lines = _env_lines(ENV_FILE.read_text())
    fields = {f"KAVA_{name.upper()}": name for name in Settings.model_fields}
    assert set(lines) == set(fields), f"kava.env and Settings differ: {sorted(set(lines) ^ set(fields))}"
    assert not {var for var in SECRETS if lines[var][0] or lines[var][1]}, "no secret in kava.env"

    image = _image_env()
    for var in fields:
        monkeypatch.delenv(var, raising=False)
    documented = {var: value for var, (_, value) in lines.items() if value}
    for var, value in documented.items():  # /models exists in the image, not here
        monkeypatch.setenv(var, str(tmp_path) if var == "KAVA_ADAPTER_DIR" else value)
    settings = Settings()
    for var, value in documented.items():
        name = fields[var]
        if var in image:  # the image's own value (KAVA_HOST, KAVA_PORT, KAVA_ADAPTER_DIR)
            assert image[var] == value, f"kava.env says {var}={value}, the Dockerfile {image[var]}"
            continue
        default = Settings.model_fields[name].default
        assert getattr(settings, name) == default, f"kava.env documents {var}={value}; the default is {default!r}"


def test_every_setting_reaches_the_container_through_compose(tmp_path):
    """Every line of kava.env uncommented (a placeholder where it shows no value) and the
    secrets exported: compose's own resolution of the kava service must carry each one."""
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no compose CLI: neither `docker compose` nor `docker-compose` is installed")
    env_text = []
    for line in ENV_FILE.read_text().splitlines():
        m = ENV_LINE.match(line.strip())
        if m and m.group(2) not in SECRETS:
            line = f"{m.group(2)}={m.group(3) or 'set-' + m.group(2).lower()}"
        env_text.append(line)
    (tmp_path / "kava.env").write_text("\n".join(env_text) + "\n")
    shutil.copy(ROOT / GPU_FILE, tmp_path / GPU_FILE)
    host = {"PATH": os.environ["PATH"], **{var: "secret" for var in SECRETS}}
    result = subprocess.run(
        [*cli, "-f", GPU_FILE, "config"], cwd=tmp_path, env=host, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    environment = yaml.safe_load(result.stdout)["services"]["kava"]["environment"]
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    missing = sorted(f"KAVA_{n.upper()}" for n in Settings.model_fields if not environment.get(f"KAVA_{n.upper()}"))
    assert not missing, f"these settings never reach the container: {missing}"


def test_the_image_runs_kava_serve_so_arguments_append():
    instructions = _dockerfile()
    (entrypoint,) = [args for ins, args in instructions if ins == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["kava", "serve"]
    assert not [args for ins, args in instructions if ins == "CMD"], "a CMD would be replaced by docker run's args"
    env = _image_env()
    assert env["KAVA_HOST"] == "0.0.0.0" and env["KAVA_ADAPTER_DIR"] == "/models"
    assert ("EXPOSE", env["KAVA_PORT"]) in instructions
    assert "kava.env" in (ROOT / ".dockerignore").read_text().split()


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


def _mounts(service: dict) -> dict[str, str]:
    """container path -> host path of a service's bind mounts."""
    out = {}
    for volume in service["volumes"]:
        source, target = volume.split(":")[:2]
        out[target] = source
    return out


@pytest.mark.parametrize("name", [GPU_FILE, CPU_FILE])
def test_grafana_is_provisioned_with_prometheus_and_the_dashboard(name):
    compose = _load(name)["services"]
    grafana = compose["grafana"]
    assert grafana["image"].startswith("grafana/grafana:")
    assert "prometheus" in grafana["depends_on"]
    mounts = _mounts(grafana)
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"

    (datasource,) = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert datasource["type"] == "prometheus"
    host, port = re.fullmatch(r"http://([\w-]+):(\d+)", datasource["url"]).groups()
    assert host in compose and f"{port}:{port}" in compose[host]["ports"]

    (provider,) = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "kava.yml").read_text())["providers"]
    folder = provider["options"]["path"]
    assert Path(mounts[folder]).resolve() == (ROOT / mounts[folder]).resolve() == DASHBOARD.parent.resolve()
    env = dict(item.split("=", 1) for item in grafana["environment"])
    home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{folder}/{DASHBOARD.name}"


def test_every_panel_reads_the_provisioned_datasource():
    (datasource,) = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    board = json.loads(DASHBOARD.read_text())
    panels = [p for top in board["panels"] for p in (top, *top.get("panels", []))]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["targets"] and all(t["expr"] for t in panel["targets"]), f"{panel['title']}: no query"
        sources = [panel.get("datasource"), *(t.get("datasource") for t in panel.get("targets", []))]
        assert all(s == {"type": "prometheus", "uid": datasource["uid"]} for s in sources if s), panel["title"]
    for var in board["templating"]["list"]:
        assert var["datasource"]["uid"] == datasource["uid"], var["name"]


def test_dockerfile_installs_dependencies_before_the_code():
    lines = [line.split()[0:2] for line in (ROOT / "Dockerfile").read_text().splitlines() if line.strip()]
    instructions = [" ".join(words) for words in lines if words and not words[0].startswith("#")]
    first_code_copy = instructions.index("COPY kava")
    assert instructions.index("COPY pyproject.toml") < first_code_copy
    dependency_install = next(i for i, x in enumerate(instructions) if x.startswith("RUN python"))
    assert dependency_install < first_code_copy
    user = next(x for x in instructions if x.startswith("USER "))
    assert not user.split()[1].startswith(("0", "root"))
