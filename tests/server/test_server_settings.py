"""Settings: KAVA_* variables, flags over variables (one flag per field, generated), bounds
that name the limit, the built-in default, adapter roots, keys never logged, `kava serve
--help` without torch, and an app factory that starts nothing until its lifespan runs."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError
from tiny import make_model

import kava.builtin
from kava.adapters import save_adapter
from server import cli
from server.app import build_engine, create_app
from server.runner import ModelRunner
from server.settings import AdapterSpec, BuiltinMissing, Settings, redact


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_environment_variables_fill_the_settings(monkeypatch):
    monkeypatch.setenv("KAVA_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("KAVA_ADAPTERS", "a=/models/a, /models/b")
    monkeypatch.setenv("KAVA_API_KEY", "k")
    monkeypatch.setenv("KAVA_WARMUP", "false")
    s = Settings()
    assert s.max_batch_size == 7 and s.warmup is False
    assert s.adapters == (AdapterSpec(name="a", path=Path("/models/a")), AdapterSpec(name="b", path=Path("/models/b")))
    assert s.api_key.get_secret_value() == "k"


def test_flags_override_environment_variables(monkeypatch):
    monkeypatch.setenv("KAVA_PORT", "9000")
    monkeypatch.setenv("KAVA_MAX_WAIT_MS", "3")
    s = cli.settings_from_args(_args("--port", "9100", "--adapter", "x=/m/x", "--adapter", "y=/m/y", "--no-warmup"))
    assert s.port == 9100 and s.max_wait_ms == 3.0 and s.warmup is False
    assert [a.name for a in s.served_adapters()] == ["x", "y"]


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("max_batch_size", 0, "greater than or equal to 1"),
        ("max_queue_size", 10**9, "less than or equal to 100000"),
        ("port", 70000, "less than or equal to 65535"),
        ("device", "tpu", "pattern"),
        ("adapters", "a=/x,a=/y", "unique"),
    ],
)
def test_bounds_are_checked_and_named(field, value, needle):
    with pytest.raises(ValidationError) as err:
        Settings(**{field: value})
    assert field in str(err.value) and needle in str(err.value)


def test_serve_without_an_adapter_explains_how_to_get_one(monkeypatch, caplog):
    monkeypatch.setattr(kava.builtin, "builtin_available", lambda: False)
    with pytest.raises(BuiltinMissing):
        Settings().served_adapters()
    with caplog.at_level(logging.ERROR):
        assert cli.run(_args()) == 2
    assert "python -m training.builtin" in caplog.text and "--adapter NAME=PATH" in caplog.text


def test_bad_variable_fails_serve_with_the_reason(monkeypatch, caplog):
    monkeypatch.setenv("KAVA_MAX_WAIT_MS", "-1")
    with caplog.at_level(logging.ERROR):
        assert cli.run(_args("--adapter", "a=/x")) == 2
    assert "max_wait_ms" in caplog.text


def test_the_factory_starts_nothing(runner):
    s = Settings(warmup=False)
    app = create_app(s, build_engine(s, runner))
    engine = app.state.kava.engine
    assert engine.snapshot().state == "created" and not engine.alive


def test_no_arguments_serve_the_builtin_model(monkeypatch, tiny_bases, tmp_path):
    """The built-in adapter records the id `kava-builtin`; it must load from the package."""
    model = make_model(tiny_bases["llama"])
    model.base_model_id = kava.builtin.BUILTIN_ID
    save_adapter(model, tmp_path / "adapter")
    monkeypatch.setattr(kava.builtin, "BUILTIN_BASE", tiny_bases["llama"])
    monkeypatch.setattr(kava.builtin, "BUILTIN_ADAPTER", tmp_path / "adapter")
    monkeypatch.setattr(kava.builtin, "builtin_available", lambda: True)
    s = Settings()
    assert (s.host, s.port) == ("127.0.0.1", 8000)
    (spec,) = s.served_adapters()
    runner = ModelRunner.load([spec], device="cpu")
    (info,) = runner.infos()
    assert (info.name, info.base_model) == ("builtin", "kava-builtin")


def test_every_setting_has_a_flag_with_its_help():
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    dests = {a.dest: a for a in parser._actions}
    for name, info in Settings.model_fields.items():
        assert name in dests, f"no flag for {name}"
        assert f"KAVA_{name.upper()}" in dests[name].help and info.description
    args = _args("--adapter-root", "/tmp", "--adapter-root", "/", "--max-body-bytes", "2048", "--admin-api-key", "a")
    s = cli.settings_from_args(args)
    assert s.adapter_roots == (Path("/tmp"), Path("/")) and s.max_body_bytes == 2048
    assert s.admin_api_key.get_secret_value() == "a" and s.runtime_adapters


def test_adapter_roots_come_from_the_environment_and_must_exist(monkeypatch, tmp_path):
    (tmp_path / "a").mkdir()
    monkeypatch.setenv("KAVA_ADAPTER_ROOTS", f"{tmp_path / 'a'}, {tmp_path}")
    assert Settings().adapter_roots == (tmp_path / "a", tmp_path)
    assert not Settings(adapter_roots=()).runtime_adapters
    with pytest.raises(ValidationError, match="adapter_roots"):
        Settings(adapter_roots=[tmp_path / "missing"])


def test_the_keys_are_never_logged():
    out = redact(Settings(api_key="k1", admin_api_key="k2"))
    assert out["api_key"] == out["admin_api_key"] == "<set>"
    assert "k1" not in str(out) and "k2" not in str(out)


def test_serve_help_answers_without_loading_torch():
    code = (
        "import sys, time; t = time.perf_counter(); from kava_cli.main import main\n"
        "try:\n    main(['serve', '--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'\n"
        "print(time.perf_counter() - t, file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--adapter-root DIR" in done.stdout and "--max-body-bytes" in done.stdout


def test_a_malformed_adapter_stops_serve_with_the_file_and_problem(adapter_dir, tmp_path, caplog):
    import shutil

    bad = Path(shutil.copytree(adapter_dir, tmp_path / "bad"))
    (bad / "kava_config.json").write_text("[1]")
    with caplog.at_level(logging.ERROR):
        assert cli.run(_args("--adapter", f"bad={bad}")) == 2
    assert "kava_config.json must hold a JSON object, got a list" in caplog.text
