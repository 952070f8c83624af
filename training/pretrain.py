"""Train a small backbone from scratch: a byte-level BPE tokenizer and a Llama-family LM
supervised on CoT teacher sequences `Q C P A <eos>` (the project's built-in base model).

Owns the tokenizer recipe (digits are single tokens) and the from-scratch LM config and
loop (through the shared `Trainer`, so it checkpoints and resumes). Does not own the
KaVa adapter training (`training.run`).
"""

from __future__ import annotations

import logging
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from kava.config import MethodConfig
from kava.losses import ce_loss
from kava.prompts import Example, encode_teacher, positions
from training.data.sampler import EpochSampler
from training.resume import plan_resume
from training.trainer import OptimSettings, Trainer

log = logging.getLogger(__name__)

EOS, PAD, UNK = "<eos>", "<pad>", "<unk>"


def train_tokenizer(texts: list[str], out_dir: Path, vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Byte-level BPE with every digit its own token, saved as `tokenizer.json`."""
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[UNK, EOS, PAD], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=UNK, eos_token=EOS, pad_token=PAD)
    fast.save_pretrained(str(out_dir))
    return fast


@dataclass(frozen=True)
class BackboneShape:
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 704
    max_positions: int = 512


def internalized(example: Example, position: int, share: float, seed: int) -> Example:
    """iCoT-style stepwise internalization for the backbone: with probability `share` the
    sequence at this stream `position` drops its first k steps (k in 1..n-1, at least one
    step stays written), so the model learns to carry results it never wrote. A pure
    function of (position, seed): a resumed run reads what an uninterrupted one would."""
    n = len(example.steps)
    rng = random.Random(seed * 1_000_003 + position)
    if n < 2 or rng.random() >= share:
        return example
    return Example(example.question, example.steps[rng.randint(1, n - 1) :], example.answer)


def corpus_texts(examples: list[Example]) -> list[str]:
    return [" ".join((e.question, *e.steps, "The answer is:", e.answer)) for e in examples]


def pretrain_backbone(
    examples: list[Example],
    out_dir: Path,
    *,
    shape: BackboneShape = BackboneShape(),
    settings: OptimSettings,
    vocab_size: int = 1024,
    work_dir: Path | None = None,
    stop_after: int | None = None,
    resume: str = "never",
    override_resume: bool = False,
    internalize: float = 0.0,
    init: Path | None = None,
) -> Path | None:
    """Tokenizer + from-scratch Llama trained on teacher sequences with full traces.
    Resumable: with `resume="auto"`, re-running with the same `work_dir` continues from its
    checkpoint (`training.resume` rules). `internalize` is the share of sequences whose
    first steps are left implicit (`internalized`); `init` continues a saved backbone
    instead of a fresh one (`shape` and `vocab_size` are then its own). Returns `out_dir`
    once training has finished, None when stopped early by `stop_after`."""
    work = Path(work_dir or out_dir.with_name(out_dir.name + ".work"))
    run_config = {"optim": asdict(settings), "shape": asdict(shape), "vocab_size": vocab_size}
    if internalize:
        run_config["internalize"] = internalize
    if init is not None:
        run_config["init"] = str(init)
    plan = plan_resume(work, run_config, resume, override=override_resume)
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed)
    if init is not None:  # continue training a saved backbone (its tokenizer and shape)
        tok = PreTrainedTokenizerFast.from_pretrained(str(init))
        model = LlamaForCausalLM.from_pretrained(str(init))
    else:
        tok, model = _fresh(examples, work / "tokenizer", shape, vocab_size)
    log.info("backbone: %.2fM parameters", sum(p.numel() for p in model.parameters()) / 1e6)
    method = MethodConfig(objective="cot", drop_last_step=False)
    sampler = EpochSampler(len(examples), settings.seed)

    def batch_fn(start: int, count: int):
        idx = sampler.indices(start, count)
        batch = [internalized(examples[i], start + j, internalize, settings.seed) for j, i in enumerate(idx)]
        return encode_teacher(tok, batch, method, tok.eos_token_id, tok.pad_token_id)

    def loss_fn(batch) -> dict:
        out = model(input_ids=batch.ids, attention_mask=batch.mask, position_ids=positions(batch.mask))
        loss = ce_loss(out.logits, batch.labels)
        return {"total": loss, "ce": loss.detach()}

    def save_fn(_: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(out_dir))
        tok.save_pretrained(str(out_dir))

    trainer = Trainer(model, loss_fn, batch_fn, settings, work, save_fn=save_fn, run_config=run_config)
    trainer.fit(stop_after=stop_after, resume_from=plan.checkpoint if plan else None)
    return out_dir if trainer.step >= settings.max_steps else None


def _fresh(examples: list[Example], tok_dir: Path, shape: BackboneShape, vocab_size: int):
    """A tokenizer trained on the corpus (kept in `tok_dir` across resumes) and a randomly
    initialised Llama of `shape` (seeded by the caller)."""
    if (tok_dir / "tokenizer.json").is_file():
        tok = PreTrainedTokenizerFast.from_pretrained(str(tok_dir))
    else:
        tok = train_tokenizer(corpus_texts(examples), tok_dir, vocab_size)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        max_position_embeddings=shape.max_positions,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return tok, LlamaForCausalLM(cfg)
