"""KAVA_ADAPTER_DIR (`--adapter-dir`): every adapter folder in the directory is served under
its folder name — what the compose stack does with ./models mounted at /models."""

from __future__ import annotations

import logging

import pytest
from pydantic import ValidationError
from server_harness import QUESTIONS, client_for, run
from tiny import make_model

import kava.builtin
from kava.adapters import save_adapter
from server.app import create_app
from server.settings import AdapterSpec, Settings


@pytest.fixture(scope="module")
def models_dir(tiny_bases, tmp_path_factory):
    """Two adapters on one base, a folder that is no adapter, a stray file, and an adapter
    folder whose name is not an adapter name."""
    root = tmp_path_factory.mktemp("models")
    save_adapter(make_model(tiny_bases["llama"], seed=1), root / "tiny")
    save_adapter(make_model(tiny_bases["llama"], seed=2), root / "other")
    (root / "lost+found").mkdir()
    (root / "README.txt").write_text("adapters go here")
    bad = root / "has space"
    bad.mkdir()
    (bad / "kava_config.json").write_text("{}")
    return root


def test_each_adapter_folder_is_served_by_its_name(models_dir, caplog):
    with caplog.at_level(logging.WARNING):
        served = Settings(adapter_dir=models_dir).served_adapters()
    assert served == (
        AdapterSpec(name="other", path=models_dir / "other"),
        AdapterSpec(name="tiny", path=models_dir / "tiny"),
    )
    assert "has space" in caplog.text and "not an adapter name" in caplog.text


def test_given_adapters_come_first_and_keep_their_name(models_dir, tmp_path):
    settings = Settings(adapters=f"tiny={tmp_path},extra={models_dir / 'other'}", adapter_dir=models_dir)
    assert [(a.name, a.path) for a in settings.served_adapters()] == [
        ("tiny", tmp_path),  # the given tiny wins over the folder of that name
        ("extra", models_dir / "other"),
        ("other", models_dir / "other"),
    ]


def test_the_variable_sets_it_and_empty_means_none(models_dir, monkeypatch):
    monkeypatch.setenv("KAVA_ADAPTER_DIR", str(models_dir))
    assert Settings().adapter_dir == models_dir
    monkeypatch.setenv("KAVA_ADAPTER_DIR", "")
    assert Settings().adapter_dir is None


def test_a_missing_directory_fails_naming_it(tmp_path):
    with pytest.raises(ValidationError) as err:
        Settings(adapter_dir=tmp_path / "nope")
    assert "adapter_dir" in str(err.value) and "nope" in str(err.value)


def test_an_empty_directory_serves_the_builtin_model(tmp_path, monkeypatch):
    monkeypatch.setattr(kava.builtin, "builtin_available", lambda: True)
    (spec,) = Settings(adapter_dir=tmp_path).served_adapters()
    assert spec.name == "builtin"


def test_a_server_over_the_directory_answers_with_each_adapter(models_dir):
    settings = Settings(adapter_dir=models_dir, device="cpu", warmup=False, max_wait_ms=0)

    async def scenario():
        async with client_for(create_app(settings)) as client:
            models = (await client.get("/v1/models")).json()
            answers = [
                await client.post("/v1/solve", json={"question": QUESTIONS[0], "adapter": name, "max_new_tokens": 2})
                for name in ("tiny", "other")
            ]
        return models, answers

    models, answers = run(scenario())
    assert sorted(m["id"] for m in models["data"]) == ["other", "tiny"]
    assert [r.status_code for r in answers] == [200, 200], [r.text for r in answers]
    assert [r.json()["adapter"] for r in answers] == ["tiny", "other"]
