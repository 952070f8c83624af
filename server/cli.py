"""`kava serve`: run the inference server under uvicorn, with a draining shutdown.

Flags are generated from `server.settings.Settings`, one per field (`max_batch_size` ->
`--max-batch-size`, a tuple field is a repeatable singular flag, a bool has `--x/--no-x`),
with the field's description, default, bounds and variable as help; a flag that is not given
leaves the field to its `KAVA_*` variable or default. Only the settings are imported before
the arguments are parsed (no torch), so `kava serve --help` answers at once. With no adapter
it serves the built-in model, or exits with how to build it. Every adapter directory is
checked (`kava.adapters.read_manifest`) before the model loads, so a malformed file stops
start-up with its name and problem. The first SIGTERM drains (see `server.draining`).
With `--replicas N` (N > 1) or `--max-replicas`, the same app runs as N replicas on Ray
Serve instead (`server.scale_out` holds those flags, `server.ray_serve` runs them).
"""

from __future__ import annotations

import argparse
import logging
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from server.scale_out import ScaleOut, deployment_options
from server.settings import AdapterSpec, BuiltinMissing, Settings

log = logging.getLogger(__name__)

# a tuple field's flag is singular and repeatable: --adapter a=/x --adapter b=/y
SINGULAR = {"adapters": "adapter", "adapter_roots": "adapter-root"}
METAVARS = {
    "adapters": "NAME=PATH",
    "adapter_dir": "DIR",
    "adapter_roots": "DIR",
    "api_key": "KEY",
    "admin_api_key": "KEY",
    "max_replicas": "N",
    "max_ongoing_requests": "N",
    "target_ongoing_requests": "X",
}


def _bounds(info: FieldInfo) -> str:
    words = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    found = [f"{words[k]} {getattr(m, k)}" for m in info.metadata for k in words if hasattr(m, k)]
    return ", ".join(found)


def _flag_help(name: str, info: FieldInfo) -> str:
    parts = [info.description or name.replace("_", " ")]
    bounds = _bounds(info)
    if bounds:
        parts.append(f"[{bounds}]")
    default = info.default
    if isinstance(default, bool):
        parts.append(f"(default {'on' if default else 'off'})")
    elif default not in (None, (), ""):
        parts.append(f"(default {default})")
    return " ".join(parts) + f"; env KAVA_{name.upper()}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per Settings field, then one per ScaleOut field in a group of their own."""
    _add_fields(parser, Settings)
    group = parser.add_argument_group("scale-out", "replicas on Ray Serve (pip install 'kava[ray]')")
    _add_fields(group, ScaleOut)


def _add_fields(parser: argparse.ArgumentParser | argparse._ArgumentGroup, model: type[BaseSettings]) -> None:
    """One flag per field; values stay strings for the model to validate (one set of messages
    for flags and variables alike)."""
    for name, info in model.model_fields.items():
        annotation = info.annotation
        args = typing.get_args(annotation)
        kwargs: dict[str, Any] = {"dest": name, "default": None, "help": _flag_help(name, info)}
        if name in METAVARS:
            kwargs["metavar"] = METAVARS[name]
        if annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(annotation) is tuple:
            kwargs["action"] = "append"
        elif typing.get_origin(annotation) is typing.Literal:
            kwargs["choices"] = list(args)
        elif annotation in (int, float):
            kwargs["type"] = annotation
            kwargs.setdefault("metavar", "N" if annotation is int else "X")
        parser.add_argument("--" + SINGULAR.get(name, name.replace("_", "-")), **kwargs)


def settings_from_args(args: argparse.Namespace) -> Settings:
    return Settings(**_given(args, Settings))


def scale_out_from_args(args: argparse.Namespace) -> ScaleOut:
    return ScaleOut(**_given(args, ScaleOut))


def _given(args: argparse.Namespace, model: type[BaseSettings]) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if v is not None and k in model.model_fields}


def _check_adapters(adapters: Sequence[AdapterSpec]) -> list[str]:
    """Every adapter directory's problems, before anything is loaded (no tensor is read)."""
    from kava.adapters import AdapterError, read_manifest

    problems = []
    for spec in adapters:
        try:
            read_manifest(spec.path)
        except AdapterError as exc:
            problems.append(f"{spec.name}: {exc}")
    return problems


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
        scale = scale_out_from_args(args)
        problems = _check_adapters(settings.served_adapters())
    except ValidationError as exc:
        log.error("invalid server settings (flags or KAVA_* variables):\n%s", exc)
        return 2
    except BuiltinMissing as exc:
        log.error("%s", exc)
        return 2
    if problems:
        log.error("cannot serve:\n%s", "\n".join(problems))
        return 2
    if scale.on_ray:
        return _run_on_ray(settings, scale)
    import uvicorn

    from server.app import create_app
    from server.draining import DrainingServer

    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=10,
    )
    server = DrainingServer(config, app.state.kava)
    server.run()
    if not server.started:
        log.error("the server did not start (see the error above)")
        return 1
    return 0


def _run_on_ray(settings: Settings, scale: ScaleOut) -> int:
    try:
        deployment_options(settings, scale)  # before Ray starts: options that do not fit together
    except ValueError as exc:
        log.error("invalid scale-out settings: %s", exc)
        return 2
    try:
        from server.ray_serve import run_local
    except ImportError as exc:
        log.error("--replicas needs Ray Serve (%s); install it with: pip install 'kava[ray]'", exc)
        return 2
    return run_local(settings, scale)
