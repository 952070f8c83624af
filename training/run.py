"""One training run from a TrainConfig: data, model, objective, trainer, adapter, evaluation.

Every objective (kava, pccot, codi, cot, nocot) goes through the same path; the method
config decides which loss terms exist (`kava.losses.training_step`). With a curriculum
(`curriculum.stages >= 1`) each step's batch is encoded for that step's stage
(`training.curriculum`). The resume rules (`training.resume`) are checked before any model
loads; `<output_dir>/train_config.json` then records the config in force. The final
adapter is written to `<output_dir>/adapter` in the format the server loads. Under
torchrun / `accelerate launch` every process runs this; the trainer shares the work.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

import torch

from kava.adapters import init_from_adapter, save_adapter, write_model_card
from kava.attention import NAME as SDPA_FP32
from kava.backbone import build_model
from kava.config import ConfigError
from kava.losses import training_step
from kava.prompts import encode_training_batch, trace_text
from training.config import TrainConfig
from training.curriculum import Curriculum, stage_accuracy
from training.data.sampler import EpochSampler
from training.data.task import Shape, resolve_examples
from training.evaluate import evaluate
from training.resume import plan_resume
from training.trainer import Trainer, make_accelerator

log = logging.getLogger(__name__)


def eval_modes(cfg: TrainConfig) -> list[str]:
    """Latent evaluation means nothing for objectives without latents; use CoT there."""
    modes = [m for m in cfg.eval.modes if m == "cot" or cfg.method.uses_latents]
    return modes or ["cot"]


def teacher_lengths(model, examples) -> list[int]:
    """Tokens in each example's question and trace (what sets a teacher row's length),
    tokenised in one batched call."""
    texts = [f"{e.question.strip()} {trace_text(e.steps, model.config)}" for e in examples]
    return [len(ids) for ids in model.tokenizer(texts, add_special_tokens=False)["input_ids"]]


def gradient_shares(terms: dict[str, torch.Tensor], model) -> dict[str, float]:
    """Each weighted loss term's gradient norm over the trainable parameters, as a share of
    their sum: which term actually drives the update (the KV term at the paper's scale took
    ~93% on the built-in backbone; as a mean, ~2.5%). Costs one extra backward per term."""
    params = list(model.trainable_parameters())
    norms = {}
    for name, term in terms.items():
        if not term.requires_grad:
            continue
        grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        norms[name] = float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)))
    total = sum(norms.values()) or 1.0
    return {k: v / total for k, v in norms.items()}


def train(
    cfg: TrainConfig, *, stop_after: int | None = None, progress: bool = True, override_resume: bool = False
) -> dict[str, Any]:
    """Run (or resume, per `cfg.resume`) training; returns the last logged record (with
    `eval` at the end) on the main process. Raises `training.resume.ResumeError` when the
    output directory's checkpoint may not be resumed or overwritten as asked."""
    out = Path(cfg.output_dir)
    plan = plan_resume(out, cfg.to_dict(), cfg.resume, override=override_resume)
    # with latents every trainable parameter (LoRA, projection, special rows) is in every loss;
    # without them the projection sits out, and DDP must look for such parameters each step
    acc = make_accelerator(cfg.optim, cpu=cfg.device == "cpu", find_unused_parameters=not cfg.method.uses_latents)
    device = acc.device
    if cfg.device.startswith("cuda") and device.type != "cuda":
        raise ConfigError(f"device={cfg.device!r}: no CUDA device is visible to this process; use device=auto|cpu")
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    d = cfg.data
    shape = Shape(d.min_steps, d.max_value, d.rephrase, d.small_numbers)
    train_ex = resolve_examples(d.train, style=d.style, n=d.num_train, split="train", seed=d.seed, shape=shape)
    eval_ex = resolve_examples(d.eval, style=d.style, n=d.num_eval, split="eval", shape=shape)
    log.info("data: %d training, %d evaluation problems", len(train_ex), len(eval_ex))

    torch.manual_seed(cfg.optim.seed)
    # CPU bf16 autocast: matmuls in bf16, attention kept in fp32 (faster there; kava.attention)
    attn = SDPA_FP32 if acc.mixed_precision == "bf16" and device.type == "cpu" else "sdpa"
    model = build_model(
        cfg.base_model, cfg.method, cfg.lora, device=device, dtype=torch.float32, attn_implementation=attn
    )
    if cfg.init_adapter:
        init_from_adapter(model, cfg.init_adapter)
        log.info("weights from the adapter %s", cfg.init_adapter)
    n_train = sum(p.numel() for p in model.trainable_parameters())
    log.info("trainable parameters: %d", n_train)
    lengths = teacher_lengths(model, train_ex) if d.group_by_length else None
    sampler = EpochSampler(
        len(train_ex), cfg.optim.seed, lengths=lengths, batch=cfg.optim.batch_size, group=d.group_by_length
    )
    curriculum = None
    if cfg.curriculum.enabled:
        cur = cfg.curriculum

        def gate() -> float:
            return stage_accuracy(
                model, eval_ex, batch_size=cfg.eval.batch_size, max_new_tokens=cfg.eval.cot_max_new_tokens
            )

        curriculum = Curriculum(cur, evaluate=gate if cur.gated else None)
        if cur.stages * cur.steps_per_stage >= cfg.optim.max_steps:
            log.warning(
                "curriculum: %d stages x %d steps >= optim.max_steps=%d; the plain objective may never train",
                cur.stages,
                cur.steps_per_stage,
                cfg.optim.max_steps,
            )

    def batch_fn(start: int, count: int):
        idx = sampler.indices(start, count)
        written_from = curriculum.written_from(start // cfg.optim.batch_size) if curriculum else None
        batch = encode_training_batch(
            model.tokenizer, [train_ex[i] for i in idx], model.config, model.ids, written_from=written_from
        )
        return batch.to(device)

    calls = 0

    def loss_fn(batch) -> dict[str, Any]:
        nonlocal calls
        out_ = training_step(model, batch)
        parts = {
            "total": out_.total,
            "student_ce": out_.student_ce,
            "teacher_ce": out_.teacher_ce,
            "codi": out_.codi,
            "kv": out_.kv,
        }
        if out_.step_ce is not None:
            parts["step_ce"] = out_.step_ce
        every, calls = cfg.eval.grad_share_every, calls + 1
        if every and calls % every == 0:  # on logged steps when every is a multiple of log_every
            parts |= {f"grad_share_{k}": v for k, v in gradient_shares(out_.weighted, model).items()}
        return parts

    def eval_fn(_step: int) -> dict[str, Any]:
        model.eval()
        res = {}
        for m in eval_modes(cfg):
            limit = cfg.eval.max_new_tokens if m == "latent" else cfg.eval.cot_max_new_tokens
            r = evaluate(model, eval_ex, mode=m, batch_size=cfg.eval.batch_size, max_new_tokens=limit, progress=False)
            res[m] = {k: r[k] for k in ("accuracy", "n", "forward_passes_per_question", "seconds_per_question")}
        model.train()
        log.info("eval: %s", res)
        return res

    def save_fn(path: Path) -> None:
        extra = {"train_config": cfg.to_dict(), "trainable_parameters": n_train, "command": shlex.join(sys.argv),
                 "steps_trained": trainer.step}  # fmt: skip
        save_adapter(model, path, extra=extra)

    use_eval = cfg.eval.final or cfg.optim.eval_every > 0
    trainer = Trainer(
        model,
        loss_fn,
        batch_fn,
        cfg.optim,
        out,
        eval_fn=eval_fn if use_eval else None,
        save_fn=save_fn,
        schedule=curriculum,
        accelerator=acc,
        run_config=cfg.to_dict(),
        report_to=cfg.report_to,
    )
    if plan is None:
        last = trainer.fit(stop_after=stop_after)
    else:
        accepted = {c.field: {"saved": c.saved, "now": c.new} for c in plan.accepted}
        note = {"accepted_changes": accepted} if accepted else None
        last = trainer.fit(stop_after=stop_after, resume_from=plan.checkpoint, resume_note=note)
    if acc.is_main_process and last.get("eval") and (out / "adapter" / "kava_config.json").is_file():
        write_model_card(out / "adapter", evaluation=last["eval"])
    return last
