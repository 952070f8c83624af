"""Scale-out settings and files, without a cluster: `ScaleOut` bounds and its translation into
Ray Serve's deployment options, `kava serve`'s scale-out flags, the replica middleware, and the
KubeRay manifest (valid YAML, an import path that exists, arguments the app builder accepts,
a Ray version the `ray` extra allows, the metrics port the PodMonitor scrapes)."""

from __future__ import annotations

import argparse
import importlib
import logging
import tomllib
from pathlib import Path

import httpx
import pytest
import yaml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from pydantic import ValidationError
from server_harness import run

from server import cli
from server.scale_out import ScaleOut, deployment_options, split_args
from server.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deploy" / "kuberay" / "rayservice.yaml"


def test_fixed_replicas_and_the_default_ongoing_limits():
    options = deployment_options(Settings(max_batch_size=8), ScaleOut(replicas=3))
    assert options["num_replicas"] == 3 and "autoscaling_config" not in options
    assert options["max_ongoing_requests"] == 8, "one running batch per replica; the rest wait in Ray's router"
    assert options["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 0.0}
    assert options["graceful_shutdown_timeout_s"] > Settings().drain_timeout_s


def test_autoscaling_on_ongoing_requests():
    scale = ScaleOut(replicas=2, max_replicas=6, max_ongoing_requests=20, replica_gpus=0.5)
    options = deployment_options(Settings(), scale)
    assert "num_replicas" not in options
    assert options["autoscaling_config"] == {
        "min_replicas": 2,
        "initial_replicas": 2,
        "max_replicas": 6,
        "target_ongoing_requests": 10.0,  # half of max_ongoing_requests unless given
    }
    assert options["ray_actor_options"]["num_gpus"] == 0.5
    given = deployment_options(Settings(), ScaleOut(max_replicas=4, target_ongoing_requests=3))
    assert given["autoscaling_config"]["target_ongoing_requests"] == 3


def test_settings_that_cannot_work_are_refused_with_the_fix(tmp_path):
    with pytest.raises(ValueError, match="a load reaches one replica at random"):
        deployment_options(Settings(adapter_roots=(tmp_path,)), ScaleOut(replicas=2))
    with pytest.raises(ValidationError, match="max_replicas=2 is below replicas=3"):
        ScaleOut(replicas=3, max_replicas=2)
    with pytest.raises(ValueError, match="target_ongoing_requests=40.0 is above max_ongoing_requests=32"):
        deployment_options(Settings(), ScaleOut(max_replicas=4, target_ongoing_requests=40))
    with pytest.raises(ValidationError, match="passes port 65535"):
        ScaleOut(replicas=4, metrics_port=65534)


def test_on_ray_only_with_more_than_one_replica_or_autoscaling(monkeypatch):
    assert not ScaleOut().on_ray
    assert ScaleOut(replicas=2).on_ray and ScaleOut(max_replicas=3).on_ray
    monkeypatch.setenv("KAVA_REPLICAS", "4")
    assert ScaleOut().replicas == 4
    assert ScaleOut(replica_cpus=0.5).torch_threads == 1 and ScaleOut(replica_cpus=6).torch_threads == 6


def test_split_args_sends_each_key_to_its_model_and_names_an_unknown_one():
    settings, scale = split_args({"replicas": "2", "max_batch_size": "16", "device": "cpu", "metrics_port": 0})
    assert (scale.replicas, scale.metrics_port) == (2, 0)
    assert (settings.max_batch_size, settings.device) == (16, "cpu")
    with pytest.raises(ValidationError, match="max_batch"):
        split_args({"max_batch": "16"})


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_kava_serve_has_the_scale_out_flags():
    args = _parse(["--replicas", "2", "--max-replicas", "5", "--replica-cpus", "2", "--max-batch-size", "4"])
    scale, settings = cli.scale_out_from_args(args), cli.settings_from_args(args)
    assert (scale.replicas, scale.max_replicas, scale.replica_cpus) == (2, 5, 2.0)
    assert settings.max_batch_size == 4


def test_kava_serve_refuses_scale_out_that_cannot_work_before_starting_ray(caplog):
    caplog.set_level(logging.ERROR)
    assert cli.run(_parse(["--replicas", "3", "--max-replicas", "2"])) == 2
    assert "max_replicas=2 is below replicas=3" in caplog.text
    assert cli.run(_parse(["--max-replicas", "2", "--target-ongoing-requests", "99"])) == 2
    assert "target_ongoing_requests=99.0 is above max_ongoing_requests=32" in caplog.text


REPLICA_HEADER = "X-Kava-Replica"


def _replica_app(behind_proxy: bool) -> FastAPI:
    ray_serve = pytest.importorskip("server.ray_serve")
    assert ray_serve.REPLICA_HEADER == REPLICA_HEADER
    app = FastAPI()

    @app.get("/echo")
    async def echo(request: Request) -> JSONResponse:  # as server.middleware does: echo the id it was given
        return JSONResponse({}, headers={"X-Request-Id": request.headers.get("x-request-id", "made-here")})

    app.add_middleware(ray_serve.ReplicaHeaderMiddleware, replica="r1", behind_proxy=behind_proxy)
    return app


async def _get(app: FastAPI, headers: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        return await client.get("/echo", headers=headers)


def test_replica_header_and_one_request_id_behind_the_proxy():
    proxied = run(_get(_replica_app(behind_proxy=True), {"x-request-id": "abc"}))
    assert proxied.headers[REPLICA_HEADER] == "r1"
    assert "x-request-id" not in proxied.headers, "Ray's proxy adds the same id; two would read 'abc, abc'"
    direct = run(_get(_replica_app(behind_proxy=False), {"x-request-id": "abc"}))
    assert direct.headers["x-request-id"] == "abc" and direct.headers[REPLICA_HEADER] == "r1"


# The KubeRay manifest ----------------------------------------------------------------------
def _documents() -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(MANIFEST.read_text())}


def _application() -> dict:
    serve_config = yaml.safe_load(_documents()["RayService"]["spec"]["serveConfigV2"])
    (application,) = serve_config["applications"]
    return application


def test_rayservice_runs_our_app_builder_with_arguments_it_accepts(tmp_path):
    application = _application()
    module, _, attr = application["import_path"].partition(":")
    assert (module, attr) == ("server.ray_serve", "app_builder")
    args = {**application["args"], "adapter_dir": str(tmp_path)}  # /models exists in the pods, not here
    settings, scale = split_args(args)
    options = deployment_options(settings, scale)
    assert scale.max_replicas and options["autoscaling_config"]["target_ongoing_requests"] <= scale.ongoing_limit(
        settings
    )
    assert settings.host == "0.0.0.0", "Prometheus reaches each replica's metrics port from outside the pod"

    pytest.importorskip("ray.serve")
    from ray.serve import Application
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    builder = getattr(importlib.import_module(module), attr)
    assert isinstance(call_user_app_builder_with_args_if_necessary(builder, args), Application)


def test_rayservice_ray_version_is_one_the_ray_extra_installs():
    ray_version = _documents()["RayService"]["spec"]["rayClusterConfig"]["rayVersion"]
    (requirement,) = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["ray"]
    assert requirement.startswith("ray[serve]")
    assert Version(ray_version) in SpecifierSet(requirement.removeprefix("ray[serve]")), requirement


def test_worker_pods_fit_a_replica_and_expose_the_port_the_pod_monitor_scrapes():
    docs = _documents()
    cluster = docs["RayService"]["spec"]["rayClusterConfig"]
    args = _application()["args"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", "no replica on the head"
    (workers,) = cluster["workerGroupSpecs"]
    (container,) = workers["template"]["spec"]["containers"]
    limits = container["resources"]["limits"]
    assert float(limits["cpu"]) >= args["replica_cpus"] and limits["nvidia.com/gpu"] >= args["replica_gpus"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["kava-metrics"] == args["metrics_port"]

    monitor = docs["PodMonitor"]["spec"]
    assert monitor["selector"]["matchLabels"].items() <= workers["template"]["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["podMetricsEndpoints"]] == ["kava-metrics"]
    drain = args["drain_timeout_s"]
    assert workers["template"]["spec"]["terminationGracePeriodSeconds"] > drain
