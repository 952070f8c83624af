"""Adapters on disk: exact round trip, every problem reported at once (malformed files named,
never a crash), the typed manifest, multi-adapter, and confinement of paths to root directories."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from tiny import EXAMPLES, TINY_LORA, make_model

from kava.adapters import (
    AdapterError,
    attach_adapter,
    detach_adapter,
    find_adapter_dir,
    init_from_adapter,
    load_adapter,
    read_adapter_config,
    read_manifest,
    save_adapter,
)
from kava.config import MethodConfig
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


@pytest.fixture(scope="module")
def saved(tiny_bases, tmp_path_factory):
    return save_adapter(make_model(tiny_bases["llama"], seed=4), tmp_path_factory.mktemp("saved") / "a")


def _copy(src, dst):
    import shutil

    return Path(shutil.copytree(src, dst))


def test_the_manifest_is_typed_and_round_trips(saved):
    m = read_manifest(saved)
    assert isinstance(m.method, MethodConfig) and m.method.num_latents == 3
    assert m.lora is not None and m.lora.r == 4
    assert set(m.special_tokens) == {"<bot>", "<eot>", "<latent>"}
    assert m.to_dict() == json.loads((saved / "kava_config.json").read_text())
    assert read_adapter_config(saved)["base_model"] == m.base_model
    # load_adapter takes the manifest as well as the path
    assert load_adapter(m).config == m.method


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"[1]", "kava_config.json must hold a JSON object, got a list"),
        (b"null", "kava_config.json must hold a JSON object, got null"),
        (b'"x"', "kava_config.json must hold a JSON object, got a string"),
        (b"\xff\xfe{}", "kava_config.json is not UTF-8 text: byte 0xff at offset 0"),
        (b'{"format_version": 1', "kava_config.json is not valid JSON"),
        (b"{}", "kava_config.json lacks field 'base_model'"),
        (
            b'{"format_version": 1, "base_model": 3, "method": [], "special_tokens": {}, "vocab_size": "9",'
            b' "hidden_size": true, "lora": 5}',
            "kava_config.json: base_model must be a non-empty string",
        ),
    ],
)
def test_a_malformed_config_is_an_adapter_error_naming_the_file(saved, tmp_path, content, needle):
    path = _copy(saved, tmp_path / "a")
    (path / "kava_config.json").write_bytes(content)
    with pytest.raises(AdapterError) as err:
        read_manifest(path)
    assert any(needle in p for p in err.value.problems), err.value.problems
    assert all(str(tmp_path) not in p for p in err.value.problems)  # file names, not full paths


def test_every_field_of_a_wrong_config_is_named(saved, tmp_path):
    path = _copy(saved, tmp_path / "a")
    meta = {"format_version": 1, "base_model": 3, "method": [], "special_tokens": {}, "vocab_size": "9"}
    meta |= {"hidden_size": True, "lora": 5}
    (path / "kava_config.json").write_text(json.dumps(meta))
    with pytest.raises(AdapterError) as err:
        read_manifest(path)
    text = "\n".join(err.value.problems)
    for needle in ("base_model", "method must be an object", "special_tokens", "vocab_size", "hidden_size", "lora"):
        assert needle in text, text


@pytest.mark.parametrize("name", ["adapter_model.safetensors", "kava_weights.safetensors"])
def test_a_truncated_weight_file_is_named_before_anything_loads(saved, tmp_path, name):
    path = _copy(saved, tmp_path / "a")
    data = (path / name).read_bytes()
    (path / name).write_bytes(data[: len(data) - 100])
    with pytest.raises(AdapterError) as err:
        read_manifest(path)
    (problem,) = err.value.problems
    assert problem.startswith(f"{name} is unreadable (truncated")


def test_a_malformed_peft_config_is_named(saved, tmp_path):
    path = _copy(saved, tmp_path / "a")
    (path / "adapter_config.json").write_text("{}")
    with pytest.raises(AdapterError, match="adapter_config.json is not a peft LoRA config"):
        read_manifest(path)


def test_a_failed_attach_leaves_the_base_as_it_was(tiny_bases, saved, tmp_path):
    first = load_adapter(saved)
    path = _copy(saved, tmp_path / "b")
    # a header that parses, with tensors of the wrong shapes: peft fails mid-load
    from safetensors.torch import load_file, save_file

    weights = load_file(str(path / "adapter_model.safetensors"))
    save_file({k: torch.zeros(1, 1) for k in weights}, str(path / "adapter_model.safetensors"))
    before = set(first.lm.peft_config)
    with pytest.raises(AdapterError, match="adapter_model.safetensors cannot be loaded by peft"):
        attach_adapter(first, path, "b")
    assert set(first.lm.peft_config) == before
    solve_batch(first, QUESTIONS[:1], max_new_tokens=2)  # still serves


def test_find_adapter_dir_confines_paths_to_the_roots(saved, tmp_path):
    root = tmp_path / "root"
    inside = _copy(saved, root / "good")
    outside = _copy(saved, tmp_path / "outside")
    (root / "escape").symlink_to(outside, target_is_directory=True)
    leaky = _copy(saved, root / "leaky")
    (leaky / "tokenizer.json").unlink()
    (leaky / "tokenizer.json").symlink_to(outside / "tokenizer.json")
    (root / "alias").symlink_to(inside, target_is_directory=True)
    roots = [tmp_path / "other-root", root]
    assert find_adapter_dir(inside, roots) == inside.resolve()
    assert find_adapter_dir("good", roots) == inside.resolve()  # relative to a root
    assert find_adapter_dir("alias", roots) == inside.resolve()  # a symlink that stays inside
    for bad in (outside, "escape", "leaky", "../outside", root / "good" / ".." / ".." / "outside", "missing",
                "good/kava_config.json", "a\x00b", "/etc"):  # fmt: skip
        assert find_adapter_dir(bad, roots) is None, bad
    assert find_adapter_dir(inside, []) is None


def test_init_from_adapter_copies_every_trained_weight(tiny_bases, tmp_path):
    trained = make_model(tiny_bases["llama"], seed=3, num_iterations=2)
    save_adapter(trained, tmp_path / "a")
    fresh = make_model(tiny_bases["llama"], seed=9, num_iterations=2)
    assert not torch.equal(_logits(fresh)[1], _logits(trained)[1])
    init_from_adapter(fresh, tmp_path / "a")
    assert fresh.special_rows.requires_grad and all(p.requires_grad for p in fresh.trainable_parameters())
    for a, b in zip(_logits(fresh), _logits(trained)):
        assert torch.equal(a, b)


def test_init_from_adapter_refuses_another_lora_shape(tiny_bases, tmp_path):
    save_adapter(make_model(tiny_bases["llama"], seed=3), tmp_path / "a")
    fresh = make_model(tiny_bases["llama"], lora=replace(TINY_LORA, r=TINY_LORA.r * 2))
    before = [p.detach().clone() for p in fresh.trainable_parameters()]
    with pytest.raises(AdapterError, match=f"r={TINY_LORA.r} .* r={TINY_LORA.r * 2}"):
        init_from_adapter(fresh, tmp_path / "a")
    assert all(torch.equal(a, b) for a, b in zip(before, fresh.trainable_parameters()))
