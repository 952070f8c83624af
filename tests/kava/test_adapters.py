"""Adapters on disk: exact round trip, every problem reported at once, multi-adapter."""

from __future__ import annotations

import json

import pytest
import torch
from tiny import EXAMPLES, make_model

from kava.adapters import AdapterError, attach_adapter, detach_adapter, load_adapter, save_adapter
from kava.generate import solve_batch
from kava.latent import prefill, run_latents
from kava.prompts import encode_prefixes

QUESTIONS = [e.question for e in EXAMPLES]


def _logits(model):
    model.activate()
    batch = encode_prefixes(model.tokenizer, QUESTIONS, model.ids, with_bot=True)
    with torch.no_grad():
        pre = prefill(model, batch)
        lat = run_latents(model, pre, num_latents=3, num_iterations=2, sequential=False)
    return pre.last_logits, lat.inputs


def test_save_load_round_trip_is_exact(tiny_bases, family, tmp_path):
    model = make_model(tiny_bases[family], seed=3, num_iterations=2)
    save_adapter(model, tmp_path / "a")
    names = {p.name for p in (tmp_path / "a").iterdir()}
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "kava_config.json",
        "kava_weights.safetensors",
        "tokenizer.json",
    } <= names
    assert not any(n.endswith((".bin", ".pt")) for n in names)
    loaded = load_adapter(tmp_path / "a")
    assert loaded.config == model.config and loaded.ids == model.ids
    for a, b in zip(_logits(model), _logits(loaded)):
        assert torch.equal(a, b)
    want = solve_batch(model, QUESTIONS, max_new_tokens=6).results
    got = solve_batch(loaded, QUESTIONS, max_new_tokens=6).results
    assert [r.text for r in got] == [r.text for r in want]


def test_round_trip_without_projection(tiny_bases, tmp_path):
    model = make_model(tiny_bases["gpt2"], use_projection=False)
    save_adapter(model, tmp_path / "a")
    loaded = load_adapter(tmp_path / "a")
    assert not loaded.config.use_projection
    assert torch.equal(_logits(model)[1], _logits(loaded)[1])


def test_corrupted_directory_names_every_problem(tiny_bases, tmp_path):
    model = make_model(tiny_bases["llama"])
    path = save_adapter(model, tmp_path / "a")
    meta = json.loads((path / "kava_config.json").read_text())
    meta["format_version"] = 99
    meta["method"]["num_latents"] = 0
    (path / "kava_config.json").write_text(json.dumps(meta))
    (path / "adapter_model.safetensors").unlink()
    (path / "kava_weights.safetensors").write_bytes(b"not a safetensors file")
    (path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(AdapterError) as err:
        load_adapter(path)
    msg = str(err.value)
    for needle in (
        "format_version=99",
        "num_latents=0",
        "adapter_model.safetensors is missing",
        "kava_weights.safetensors is unreadable",
        "pytorch_model.bin: pickle",
    ):
        assert needle in msg, msg
    assert len(err.value.problems) == 5


def test_mismatched_base_names_every_problem(tiny_bases, tmp_path):
    model = make_model(tiny_bases["llama"])
    path = save_adapter(model, tmp_path / "a")
    meta = json.loads((path / "kava_config.json").read_text())
    meta["hidden_size"] = 64
    meta["special_tokens"]["<bot>"] = 7
    (path / "kava_config.json").write_text(json.dumps(meta))
    with pytest.raises(AdapterError) as err:
        load_adapter(path)
    msg = str(err.value)
    assert "hidden_size" in msg and "special token ids" in msg and "special_rows" in msg


def test_missing_directory(tmp_path):
    with pytest.raises(AdapterError, match="not a directory"):
        load_adapter(tmp_path / "nope")


def test_attach_two_adapters_on_one_base(tiny_bases, tmp_path):
    a = make_model(tiny_bases["qwen2"], seed=1)
    b = make_model(tiny_bases["qwen2"], seed=2)
    save_adapter(a, tmp_path / "a")
    save_adapter(b, tmp_path / "b")
    first = load_adapter(tmp_path / "a")
    second = attach_adapter(first, tmp_path / "b", "b")
    assert second.lm is first.lm
    want_a = solve_batch(a, QUESTIONS, max_new_tokens=6).results
    want_b = solve_batch(b, QUESTIONS, max_new_tokens=6).results
    # alternate to check that activation really switches LoRA weights
    assert [r.text for r in solve_batch(second, QUESTIONS, max_new_tokens=6).results] == [r.text for r in want_b]
    assert [r.text for r in solve_batch(first, QUESTIONS, max_new_tokens=6).results] == [r.text for r in want_a]
    torch.testing.assert_close(_logits(second)[0], _logits(b)[0])
    detach_adapter(second)
    assert "b" not in first.lm.peft_config
    with pytest.raises(AdapterError, match="already loaded"):
        attach_adapter(first, tmp_path / "a", "default")
