"""The adapter's model card (`README.md` beside the weights): text only, no file access.

Renders what a reader of a hub page expects from what the adapter's manifest records: the
method and its M/T, the base model, LoRA shape, the training data and budget, the command
that made it, and held-out accuracy in both modes when an evaluation was run. Writing the
file is `kava.adapters`' job.
"""

from __future__ import annotations

from typing import Any


def _pct(value: Any) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, (int, float)) else "–"


def render_model_card(manifest: Any, evaluation: dict[str, Any] | None = None) -> str:
    """`manifest` is a `kava.adapters.AdapterManifest` (base_model, method, lora, extra)."""
    base_model, method, lora = manifest.base_model, manifest.method, manifest.lora
    extra = manifest.extra or {}
    tc, command = extra.get("train_config") or {}, extra.get("command")
    data, optim = tc.get("data", {}), tc.get("optim", {})
    lines = [
        "---",
        f"base_model: {base_model}",
        "library_name: peft",
        "pipeline_tag: text-generation",
        "tags: [kava, latent-reasoning, lora]",
        "---",
        "",
        f"# KaVa adapter for `{base_model}`",
        "",
        f"A LoRA adapter trained with the `{method.objective}` objective of the kava project "
        "(KaVa: latent reasoning via compressed KV-cache distillation). In latent mode the model "
        f"thinks in {method.num_latents} continuous latent tokens refined by {method.num_iterations} "
        "Jacobi iterations, then answers; in CoT mode the same adapter writes its chain of thought.",
        "",
        "| field | value |",
        "|---|---|",
        f"| base model | `{base_model}` |",
        f"| objective | {method.objective} |",
        f"| latents M / iterations T | {method.num_latents} / {method.num_iterations} |",
        f"| KV eviction / key space / reduction | {method.eviction} / {method.kv_key_space} / {method.kv_reduction} |",
        f"| weights w_s, w_t, α1, α2 | {method.student_ce_weight}, {method.teacher_ce_weight}, "
        f"{method.codi_weight}, {method.kv_weight} |",
    ]
    if method.uses_step_loss:
        lines.append(f"| step supervision α3 | {method.step_weight} |")
    if lora is not None:
        lines.append(f"| LoRA r / alpha / dropout | {lora.r} / {lora.alpha} / {lora.dropout} |")
    if data:
        lines.append(f"| training data | {data.get('train')} ({data.get('style')} traces) |")
    if data.get("train") == "builtin" and data.get("max_value") is not None:
        lines.append(
            f"| generated task | numbers up to {data['max_value']}, {data.get('min_steps', 2)}–4 steps; "
            f"reworded share {data.get('rephrase', 0.0)}, small-number share {data.get('small_numbers', 0.0)} |"
        )
    if tc.get("init_adapter"):
        lines.append(f"| starts from | the adapter `{tc['init_adapter']}`, fine-tuned further |")
    if optim:
        steps = extra.get("steps_trained", optim.get("max_steps"))
        timed = f" (time budget {optim['max_minutes']} min)" if optim.get("max_minutes") else ""
        lines.append(f"| budget | {steps} steps × batch {optim.get('batch_size')}, lr {optim.get('lr')}{timed} |")
    curriculum = tc.get("curriculum") or {}
    if curriculum.get("stages"):
        lines.append(f"| curriculum | {curriculum['stages']} stages × {curriculum.get('steps_per_stage')} steps |")
    if evaluation:
        lines += ["", "## Evaluation (held-out, at the end of training)", "", "| mode | n | accuracy | passes / q |"]
        lines.append("|---|---|---|---|")
        for mode, r in evaluation.items():
            if isinstance(r, dict):
                passes = r.get("forward_passes_per_question")
                lines.append(
                    f"| {mode} | {r.get('n', '–')} | {_pct(r.get('accuracy'))} | {passes:.1f} |"
                    if isinstance(passes, (int, float))
                    else f"| {mode} | {r.get('n', '–')} | {_pct(r.get('accuracy'))} | – |"
                )
    lines += ["", "## Use", "", "```python", "from kava import load_adapter, solve_batch", ""]
    lines += ['model = load_adapter("path/to/this/adapter")', 'answer = solve_batch(model, ["..."]).results[0].answer']
    lines += ["```", "", "or `kava serve --adapter name=path/to/this/adapter`."]
    if command:
        lines += ["", "## Made with", "", "```bash", command, "```"]
    return "\n".join(lines) + "\n"
