"""Scale-out settings: how many engine replicas Ray Serve runs, and what each one gets.

Owns the knobs of the Ray Serve deployment (replicas, autoscaling on ongoing requests, the
CPUs/GPUs and torch threads of each replica, the per-replica metrics port), their bounds, and
the pure translation into Ray Serve's deployment options. Kept apart from `server.settings`
because none of it changes what one server does: every replica runs `create_app(settings)`
with the server's `Settings` unchanged. Imports neither ray nor torch, so `kava serve --help`
stays instant and the KubeRay manifest's arguments can be checked without a cluster. Does not
own the deployment itself (`server.ray_serve`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from server.settings import Settings

DEPLOYMENT_NAME = "kava"
APP_NAME = "kava"


class ScaleOut(BaseSettings):
    """The Ray Serve deployment of `kava serve --replicas N` and `serve run server.ray_serve:app_builder`."""

    model_config = SettingsConfigDict(env_prefix="KAVA_", frozen=True, extra="forbid")

    replicas: int = Field(
        default=1,
        ge=1,
        le=1024,
        description="engine replicas, each with its own engine and model copy; more than 1 (or --max-replicas) "
        "serves through Ray Serve (pip install 'kava[ray]'); the minimum when autoscaling",
    )
    max_replicas: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="autoscale between --replicas and this many replicas on ongoing requests per replica",
    )
    target_ongoing_requests: float | None = Field(
        default=None,
        gt=0,
        le=100_000,
        description="ongoing requests per replica the autoscaler aims for (default: half of max ongoing requests)",
    )
    max_ongoing_requests: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="requests Ray hands one replica at once; more wait in Ray's router for a free replica "
        "(default: --max-batch-size)",
    )
    replica_cpus: float = Field(
        default=1.0, gt=0, le=1024, description="CPUs Ray reserves per replica; torch runs max(1, int(this)) threads"
    )
    replica_gpus: float = Field(
        default=0.0, ge=0, le=64, description="GPUs Ray reserves per replica (e.g. 1, or 0.5 for two per GPU)"
    )
    metrics_port: int = Field(
        default=9400,
        ge=0,
        le=65535,
        description="each replica also serves /metrics, /health and /ready on this port + its rank on its node, "
        "for Prometheus to scrape every replica; 0: off",
    )

    @model_validator(mode="after")
    def _consistent(self) -> ScaleOut:
        if self.max_replicas is not None and self.max_replicas < self.replicas:
            raise ValueError(
                f"max_replicas={self.max_replicas} is below replicas={self.replicas}; "
                "--replicas is the autoscaler's minimum, so raise --max-replicas or lower --replicas"
            )
        if self.metrics_port and self.metrics_port + self.most_replicas - 1 > 65535:
            raise ValueError(
                f"metrics_port={self.metrics_port} + {self.most_replicas} replicas passes port 65535; lower it"
            )
        return self

    @property
    def most_replicas(self) -> int:
        return self.max_replicas or self.replicas

    @property
    def on_ray(self) -> bool:
        """Whether `kava serve` runs Ray Serve rather than one uvicorn process."""
        return self.replicas > 1 or self.max_replicas is not None

    @property
    def torch_threads(self) -> int:
        return max(1, int(self.replica_cpus))

    def ongoing_limit(self, settings: Settings) -> int:
        return self.max_ongoing_requests or settings.max_batch_size


def split_args(args: Mapping[str, Any]) -> tuple[Settings, ScaleOut]:
    """`serve run server.ray_serve:app_builder key=value ...` (or a RayService's `args`):
    the deployment's keys go to `ScaleOut`, every other one to the server's `Settings`, which
    names any key it does not know. `KAVA_*` variables fill what is not given."""
    scale = {k: v for k, v in args.items() if k in ScaleOut.model_fields}
    rest = {k: v for k, v in args.items() if k not in ScaleOut.model_fields}
    return Settings(**rest), ScaleOut(**scale)


def deployment_options(settings: Settings, scale: ScaleOut) -> dict[str, Any]:
    """Keyword arguments of `serve.deployment(...)` / `.options(...)` for these settings."""
    if settings.runtime_adapters:
        raise ValueError(
            "adapter_roots (POST/DELETE /v1/adapters) cannot be used with Ray Serve replicas: a load reaches one "
            "replica at random and a new replica starts without it; serve adapters with --adapter or --adapter-dir"
        )
    ongoing = scale.ongoing_limit(settings)
    target = scale.target_ongoing_requests or max(1.0, ongoing / 2)
    if target > ongoing:
        raise ValueError(
            f"target_ongoing_requests={target} is above max_ongoing_requests={ongoing}: a replica never gets that "
            "many, so the autoscaler would never scale up; lower the target or raise max_ongoing_requests"
        )
    options: dict[str, Any] = {
        "name": DEPLOYMENT_NAME,
        "max_ongoing_requests": ongoing,
        "ray_actor_options": {"num_cpus": scale.replica_cpus, "num_gpus": scale.replica_gpus},
        # a replica being replaced drains first (server.app.ServerContext.drain)
        "graceful_shutdown_timeout_s": settings.drain_timeout_s + 5.0,
    }
    if scale.max_replicas is None:
        options["num_replicas"] = scale.replicas
    else:
        options["autoscaling_config"] = {
            "min_replicas": scale.replicas,
            "initial_replicas": scale.replicas,
            "max_replicas": scale.max_replicas,
            "target_ongoing_requests": target,
        }
    return options
