"""`kava eval`: the metric itself is checked with a model built to answer one number."""

from __future__ import annotations

import json

import torch
from tiny import make_model

from kava.adapters import save_adapter
from kava.prompts import Example
from kava_cli.main import main as kava_main
from training.data.task import held_out, held_out_rephrased
from training.evaluate import breakdown, breakdown_table, evaluate

FIELDS = {
    "accuracy",
    "n",
    "forward_passes_per_question",
    "prompt_tokens_per_question",
    "latent_tokens_per_question",
    "generated_tokens_per_question",
    "seconds_per_question",
    "kv_cache_bytes_per_question",
}


def rig_to_answer(model, text: str) -> None:
    """GPT-2 with ln_f.weight = 0 emits the same hidden state everywhere; pointing it at a
    token's (tied) embedding row makes that token the argmax at every step."""
    tok = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(tok) == 1
    base = model.lm.get_base_model()
    with torch.no_grad():
        base.transformer.ln_f.weight.zero_()
        row = base.lm_head.weight[tok[0]]
        row.mul_(10.0)
        base.transformer.ln_f.bias.copy_(row)


def test_accuracy_is_one_for_a_model_that_answers_right(tiny_bases):
    model = make_model(tiny_bases["gpt2"])
    rig_to_answer(model, "7")
    right = [Example(f"Question {i}?", ("<<3+4=7>>",), "7") for i in range(5)]
    wrong = [Example(f"Question {i}?", ("<<3+5=8>>",), "8") for i in range(3)]
    for mode in ("latent", "cot"):
        r = evaluate(model, right, mode=mode, batch_size=2, max_new_tokens=1, progress=False)
        assert r["accuracy"] == 1.0 and r["correct"] == 5 and FIELDS <= r.keys()
        assert evaluate(model, wrong, mode=mode, max_new_tokens=1, progress=False)["accuracy"] == 0.0
    latent = evaluate(model, right, mode="latent", max_new_tokens=1, progress=False)
    assert latent["latent_tokens_per_question"] == model.config.num_latents
    assert latent["forward_passes_per_question"] == 1 + model.config.num_iterations
    mixed = evaluate(model, right + wrong, mode="latent", max_new_tokens=1, progress=False)
    assert mixed["by"]["steps"] == {"1": {"n": 8, "accuracy": 5 / 8}}
    assert mixed["by"]["last_op"] == {"+": {"n": 8, "accuracy": 5 / 8}}


def test_the_breakdown_groups_by_step_count_and_last_operation():
    examples = [
        Example("a", ("<<2*3=6>>", "<<6+1=7>>"), "7"),
        Example("b", ("<<2*3=6>>", "<<6-1=5>>"), "5"),
        Example("c", ("Tom has 12/3=4 boxes.",), "4"),  # natural-language steps carry the same a op b=c
        Example("d", ("<<9-2=7>>", "<<7+1=8>>"), "8"),
        Example("e", (), "3"),  # no steps written (no-CoT data)
    ]
    by = breakdown(examples, [True, False, True, False, True])
    assert by["steps"] == {"0": {"n": 1, "accuracy": 1.0}, "1": {"n": 1, "accuracy": 1.0},
                           "2": {"n": 3, "accuracy": 1 / 3}}  # fmt: skip
    assert by["last_op"] == {"+": {"n": 2, "accuracy": 0.5}, "-": {"n": 1, "accuracy": 0.0},
                             "/": {"n": 1, "accuracy": 1.0}, "?": {"n": 1, "accuracy": 1.0}}  # fmt: skip
    table = breakdown_table({"latent": {"by": by}})
    assert "| latent |" in table and "2 steps" in table and "last /" in table and "33.3% (3)" in table


def test_kava_eval_cli_json(tiny_bases, tmp_path, capsys):
    model = make_model(tiny_bases["llama"])
    save_adapter(model, tmp_path / "a")
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"question": "What is 3 plus 4?", "steps": ["<<3+4=7>>"], "answer": "7"}) + "\n")
    code = kava_main(
        [
            "eval",
            "--adapter",
            str(tmp_path / "a"),
            "--data",
            str(data),
            "--json",
            "--max-new-tokens",
            "4",
            "--out",
            str(tmp_path / "r.json"),
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    for mode in ("latent", "cot"):
        assert FIELDS <= out[mode].keys() and out[mode]["n"] == 1
    assert out["latent_vs_cot"]["forward_pass_ratio"] > 0
    assert (tmp_path / "r.md").read_text().startswith("| mode |")


def test_kava_eval_reports_the_handwritten_set_as_its_own_row(tiny_bases, tmp_path, capsys):
    model = make_model(tiny_bases["llama"])
    save_adapter(model, tmp_path / "a")
    hand = tmp_path / "hand.jsonl"
    rows = [
        {
            "question": f"I have {i} pens and get 2 more. How many now?",
            "steps": [f"<<{i}+2={i + 2}>>"],
            "answer": f"{i + 2}",
        }
        for i in range(3)
    ]
    hand.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["eval", "--adapter", str(tmp_path / "a"), "--json", "--limit", "2", "--max-new-tokens", "2"]
    assert kava_main([*args, "--handwritten", str(hand)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["data"] == "builtin" and out["latent"]["n"] == 2
    assert out["handwritten"]["data"] == str(hand)
    for mode in ("latent", "cot"):
        assert FIELDS <= out["handwritten"][mode].keys() and out["handwritten"][mode]["n"] == 2
    assert kava_main([*args, "--handwritten", ""]) == 0
    assert "handwritten" not in json.loads(capsys.readouterr().out)


def test_kava_eval_reports_the_rephrased_held_out_set_as_its_own_row(tiny_bases, tmp_path, capsys):
    save_adapter(make_model(tiny_bases["llama"]), tmp_path / "a")
    args = ["eval", "--adapter", str(tmp_path / "a"), "--json", "--limit", "3", "--max-new-tokens", "2"]
    assert kava_main([*args, "--handwritten", ""]) == 0
    out = json.loads(capsys.readouterr().out)
    for mode in ("latent", "cot"):
        assert FIELDS <= out["rephrased"][mode].keys() and out["rephrased"][mode]["n"] == 3
    assert kava_main([*args, "--handwritten", "", "--no-rephrased"]) == 0
    assert "rephrased" not in json.loads(capsys.readouterr().out)


def test_the_rephrased_held_out_set_is_the_held_out_problems_reworded():
    plain, reworded = held_out("equation", 200), held_out_rephrased("equation", 200)
    assert [(e.steps, e.answer) for e in reworded] == [(e.steps, e.answer) for e in plain]
    assert sum(a.question != b.question for a, b in zip(plain, reworded)) >= 190
    assert held_out_rephrased("equation", 50) == reworded[:50]


def test_the_shipped_handwritten_set_is_well_formed():
    from training.evaluate import HANDWRITTEN

    rows = [json.loads(line) for line in HANDWRITTEN.read_text().splitlines()]
    assert len(rows) >= 100 and len({r["question"] for r in rows}) == len(rows)
    for r in rows:
        value = None
        for step in r["steps"]:
            lhs, rhs = step.strip("<>").split("=")
            assert eval(lhs, {"__builtins__": {}}) == int(rhs), (r["question"], step)  # our own file
            value = int(rhs)
        assert str(value) == r["answer"], r


def test_kava_eval_defaults_to_the_task_the_adapter_was_trained_on(tiny_bases, tmp_path, capsys):
    model = make_model(tiny_bases["llama"])
    save_adapter(model, tmp_path / "small", extra={"train_config": {"data": {"train": "builtin", "max_value": 20}}})
    save_adapter(model, tmp_path / "plain")
    args = ["eval", "--json", "--limit", "2", "--max-new-tokens", "2", "--handwritten", "", "--no-rephrased"]
    assert kava_main([*args, "--adapter", str(tmp_path / "small")]) == 0
    assert json.loads(capsys.readouterr().out)["max_value"] == 20
    assert kava_main([*args, "--adapter", str(tmp_path / "plain")]) == 0
    assert json.loads(capsys.readouterr().out)["max_value"] == 100
    assert kava_main([*args, "--adapter", str(tmp_path / "small"), "--max-value", "30"]) == 0
    assert json.loads(capsys.readouterr().out)["max_value"] == 30
