"""Tiny random backbones of each supported family, built offline for tests.

A byte-level BPE tokenizer (digits split) is trained on a few arithmetic sentences and
saved next to a randomly initialised Llama, Qwen2 or GPT-2 config, so every test goes
through the same `from_pretrained` loading path a user's local model directory does.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, LlamaConfig, PreTrainedTokenizerFast, Qwen2Config

from kava.config import LoraSettings, MethodConfig
from kava.prompts import Example

FAMILIES = ("llama", "qwen2", "gpt2")

CORPUS = [
    "Tom has 3 apples and buys 4 more. How many apples does he have? <<3+4=7>> The answer is: 7",
    "A box holds 12 pens. 5 are red. How many are not red? <<12-5=7>> The answer is: 7",
    "Sara reads 6 pages a day for 5 days. How many pages? <<6*5=30>> The answer is: 30",
    "There are 20 cookies shared by 4 kids. How many each? <<20/4=5>> The answer is: 5",
]

EXAMPLES = [
    Example("Tom has 3 apples and buys 4 more. How many apples?", ("<<3+4=7>>", "<<7*2=14>>"), "14"),
    Example("A box holds 12 pens and 5 are red. How many are not red?", ("<<12-5=7>>",), "7"),
    Example(
        "Sara reads 6 pages a day for 5 days, then 2 more. How many pages in all does she read?",
        ("<<6*5=30>>", "<<30+2=32>>", "<<32*1=32>>"),
        "32",
    ),
    Example("20 cookies, 4 kids. How many each?", ("<<20/4=5>>",), "5"),
]


def build_tokenizer(path: Path) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")
    fast.save_pretrained(str(path))
    return fast


def family_config(family: str, vocab: int):
    # Llama and Qwen2 share a shape (GQA: 4 query heads over 2 KV heads); only tying differs
    rotary = dict(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.1,
        eos_token_id=1,
        pad_token_id=1,
        bos_token_id=None,
    )
    if family == "llama":
        return LlamaConfig(tie_word_embeddings=False, **rotary)
    if family == "qwen2":
        return Qwen2Config(tie_word_embeddings=True, **rotary)
    if family == "gpt2":
        return GPT2Config(
            vocab_size=vocab,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=256,
            initializer_range=0.1,
            eos_token_id=1,
            bos_token_id=1,
            pad_token_id=1,
        )
    raise ValueError(family)


def build_base(family: str, path: Path, seed: int = 0) -> Path:
    """Save tokenizer + a random tiny `family` model to `path`; returns the path."""
    from transformers import AutoModelForCausalLM

    path.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(path)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(family_config(family, len(tok)))
    model.save_pretrained(str(path))
    return path


def tiny_method(**overrides) -> MethodConfig:
    base = dict(num_latents=3, num_iterations=3, codi_weight=1.0, kv_weight=1.0)
    base.update(overrides)
    return MethodConfig(**base)


TINY_LORA = LoraSettings(r=4, alpha=8, dropout=0.0)


def perturb_trainables(model, scale: float = 0.1, seed: int = 0) -> None:
    """LoRA B starts at zero (adapter = identity); give every trainable tensor random
    values so tests exercise a non-trivial adapter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and "special_rows" not in name:
                p.add_(torch.randn(p.shape, generator=g).to(p.device, p.dtype) * scale)  # the same values on any device


def make_model(base: Path, seed: int = 0, lora=TINY_LORA, **method):
    from kava.backbone import build_model

    torch.manual_seed(seed)
    model = build_model(base, tiny_method(**method), lora)
    perturb_trainables(model, seed=seed)
    return model.eval()
