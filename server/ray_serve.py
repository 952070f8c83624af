"""Ray Serve: the same FastAPI app and engine, one per replica, behind Ray's HTTP proxy.

Each replica builds `create_app(settings)` itself (serve.ingress with a builder, evaluated on
the replica), so it owns its engine thread, model copy and metrics registry; Ray's proxy
spreads requests over the replicas, runs the app's lifespan (model load and warm-up before a
replica takes traffic, a drain when it is stopped) and replaces a replica whose process dies
or whose engine thread died (`check_health`). Every response names its replica in
`X-Kava-Replica`. Because `/metrics` through the proxy reaches one replica at random, each
replica also serves the same probes router (`/metrics`, `/health`, `/ready`) on its own port,
`metrics_port + local rank` on its node, which Prometheus scrapes like any other target.

Entry points:
- `kava serve --replicas N [--max-replicas M]` (`run_local`): starts Ray (or joins the
  cluster in `RAY_ADDRESS`, whose running Serve keeps its own HTTP options), serves on
  `--host`/`--port`, drains on SIGTERM or Ctrl+C.
- `serve run server.ray_serve:app_builder replicas=2 max_batch_size=16 ...` and a KubeRay
  RayService's `import_path` (`app_builder`): every key is a `ScaleOut` or `Settings` field.
Does not own the knobs (`server.scale_out`) nor the app (`server.app`).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI
from ray import serve
from ray.serve import Application
from ray.serve.exceptions import RayServeException
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.routes import probes
from server.scale_out import APP_NAME, ScaleOut, deployment_options, split_args
from server.settings import Settings

log = logging.getLogger(__name__)

REPLICA_HEADER = "X-Kava-Replica"
REQUEST_ID = "x-request-id"  # Ray's proxy and server.middleware both use it


class ReplicaHeaderMiddleware:
    """Adds `X-Kava-Replica: <replica id>` to every HTTP response. Behind Ray's proxy, which
    appends the request's `X-Request-Id` to every response itself, the app's own copy of that
    same id is dropped, so a client sees one id rather than "id, id"."""

    def __init__(self, app: ASGIApp, replica: str, behind_proxy: bool) -> None:
        self.app = app
        self.replica = replica
        self.behind_proxy = behind_proxy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        proxy_id = Headers(scope=scope).get(REQUEST_ID) if self.behind_proxy else None

        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers[REPLICA_HEADER] = self.replica
                if proxy_id is not None and headers.get(REQUEST_ID) == proxy_id:
                    del headers[REQUEST_ID]
            await send(message)

        await self.app(scope, receive, tagged)


class MetricsSidecar:
    """The replica's probes router (same `ServerContext`, same registry) on a port of its own,
    served by uvicorn on a daemon thread so a busy replica event loop never delays a scrape."""

    def __init__(self, main: FastAPI, replica: str, host: str, port: int) -> None:
        side = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
        side.state.kava = main.state.kava
        side.include_router(probes)
        side.add_middleware(ReplicaHeaderMiddleware, replica=replica, behind_proxy=False)
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))  # here, so a taken port fails the replica with its number
        self.sock.listen(128)  # and connections wait in the backlog until uvicorn's thread accepts
        self.address = f"{host}:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(side, lifespan="off", log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, name="kava-metrics", daemon=True
        )

    def start(self) -> None:
        self.thread.start()
        log.info("this replica's /metrics: http://%s/metrics", self.address)

    def stop(self) -> None:
        if self.thread.is_alive():
            self.server.should_exit = True
            self.thread.join(timeout=5.0)
        self.sock.close()


def _local_rank() -> int:
    """This replica's rank among the deployment's replicas on its node (Ray hands a replaced
    replica's rank to its successor, so the port stays the same)."""
    return serve.get_replica_context().rank.local_rank


def replica_app(settings: Settings, scale: ScaleOut) -> FastAPI:
    """The app one replica serves: `create_app(settings)`, its responses tagged with the
    replica id, and (with a metrics port) the metrics sidecar started after the model loaded."""
    import torch

    torch.set_num_threads(scale.torch_threads)
    from server.app import create_app  # here: it loads torch and the model code

    app = create_app(settings)
    replica = serve.get_replica_context().replica_tag
    app.add_middleware(ReplicaHeaderMiddleware, replica=replica, behind_proxy=True)
    if not scale.metrics_port:
        return app
    sidecar = MetricsSidecar(app, replica, settings.host, scale.metrics_port + _local_rank())
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: FastAPI) -> AsyncIterator[None]:
        try:
            async with inner(a):  # model loaded and warm: scrapes may start
                sidecar.start()
                yield
        finally:  # after the drain, so the drain itself is scraped
            await asyncio.to_thread(sidecar.stop)

    app.router.lifespan_context = lifespan
    return app


class KavaReplica:
    """The deployment's class; `serve.ingress` gives it the app (`self.app`) built on the replica."""

    app: FastAPI

    def check_health(self) -> None:
        """Ray's periodic health check: a dead engine thread makes Ray replace the replica."""
        if not self.app.state.kava.engine.alive:
            raise RuntimeError("the engine thread died; this replica cannot answer")


def build_app(settings: Settings, scale: ScaleOut) -> Application:
    """The bound Ray Serve application: `scale`'s replicas of `replica_app(settings, scale)`."""

    def build() -> FastAPI:  # a closure, so each replica builds its own app from these settings
        return replica_app(settings, scale)

    ingress = serve.ingress(build)(KavaReplica)
    return serve.deployment(ingress, **deployment_options(settings, scale)).bind()


def app_builder(args: dict[str, str]) -> Application:
    """`serve run server.ray_serve:app_builder replicas=2 max_replicas=4 max_batch_size=16`:
    each key is a `ScaleOut` or `Settings` field (unset ones come from `KAVA_*` or defaults)."""
    settings, scale = split_args(args)
    return build_app(settings, scale)


def run_local(settings: Settings, scale: ScaleOut) -> int:
    """`kava serve --replicas N`: Ray Serve on `settings.host:port` until SIGTERM or Ctrl+C,
    then every replica drains (Ray waits for its ongoing requests, then the app's lifespan
    drains the engine) and Ray stops. Joins the cluster in `RAY_ADDRESS` when it is set (and
    then leaves it, and any other Serve application on it, running)."""
    import ray

    stop = threading.Event()

    def _on_signal(signum: int, frame: Any) -> None:
        log.info("%s received: draining the replicas, then stopping Ray Serve", signal.Signals(signum).name)
        stop.set()

    ray.init()
    # after ray.init, which installs handlers of its own; a signal during start-up stops once it is up
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        serve.run(build_app(settings, scale), name=APP_NAME, route_prefix="/")
        replicas = f"{scale.replicas}..{scale.max_replicas}" if scale.max_replicas else str(scale.replicas)
        log.info("serving on http://%s:%d through Ray Serve, %s replicas", settings.host, settings.port, replicas)
        while not stop.wait(1.0):
            pass
        serve.delete(APP_NAME)  # waits for every replica to drain and stop
        return 0
    except (RuntimeError, RayServeException) as exc:  # a replica that keeps failing to start fails the deployment
        log.error("Ray Serve did not start the deployment: %s", exc)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        ray.shutdown()
