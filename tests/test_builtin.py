"""The shipped built-in model: files intact, small, and still answering known questions.

A regression guard: it fails if the weights, the tokenizer or the inference path change
what the built-in adapter answers on held-out questions it answered correctly at build time.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from kava.builtin import BUILTIN_ADAPTER, BUILTIN_DIR, builtin_available
from training.data.task import held_out, training_problems

needs_builtin = pytest.mark.skipif(
    not builtin_available(), reason="built-in model not built (python -m training.builtin)"
)


@needs_builtin
def test_shipped_files_match_their_recorded_hashes_and_fit_the_budget():
    lines = (BUILTIN_DIR / "SHA256SUMS").read_text().split("\n")
    recorded = dict(reversed(line.split("  ", 1)) for line in lines if line.strip())
    assert any(name.endswith("model.safetensors") for name in recorded)
    assert any(name.endswith("adapter_model.safetensors") for name in recorded)
    for name, digest in recorded.items():
        assert hashlib.sha256((BUILTIN_DIR / name).read_bytes()).hexdigest() == digest, name
    total = sum(p.stat().st_size for p in BUILTIN_DIR.rglob("*") if p.is_file())
    assert total < 40 * 2**20, f"built-in model is {total / 2**20:.1f} MiB"


@needs_builtin
def test_shipped_adapter_names_its_base_by_id_and_has_a_model_card():
    peft_cfg = json.loads((BUILTIN_ADAPTER / "adapter_config.json").read_text())
    assert peft_cfg["base_model_name_or_path"] == "kava-builtin"
    card = (BUILTIN_ADAPTER / "README.md").read_text()
    assert "base_model: kava-builtin" in card and "| latent |" in card and "| cot |" in card


@needs_builtin
def test_builtin_adapter_answers_known_held_out_questions():
    from kava.adapters import load_adapter
    from kava.generate import solve_batch

    record = json.loads((BUILTIN_DIR / "regression.json").read_text())
    assert len(record["questions"]) >= 4
    held = {e.question for e in held_out("equation")}
    assert set(record["questions"]) <= held
    model = load_adapter(BUILTIN_ADAPTER, device="cpu", dtype="float32")
    out = solve_batch(model, record["questions"], mode=record["mode"], max_new_tokens=16).results
    assert [r.answer for r in out] == record["answers"]
    assert [r.text for r in out] == record["texts"]


@needs_builtin
def test_kava_eval_json_defaults_to_the_builtin_model(capsys):
    from kava_cli.main import main

    assert main(["eval", "--json", "--limit", "8"]) == 0
    out = json.loads(capsys.readouterr().out)
    for mode in ("latent", "cot"):
        assert {"accuracy", "forward_passes_per_question", "seconds_per_question"} <= out[mode].keys()
    assert out["latent"]["forward_passes_per_question"] < out["cot"]["forward_passes_per_question"]


def test_held_out_problems_never_appear_in_the_training_stream():
    held = {e.question for e in held_out("equation")}
    for style in ("equation", "nl"):
        train = training_problems(style, 5000)
        assert len(train) == 5000
        assert not held & {e.question for e in train}
