"""Training data: the built-in word-problem generator and readers for GSM8k-style files.

Everything here yields `kava.prompts.Example` records; tokenisation lives in `kava.prompts`.
"""

from training.data.generator import (
    HELD_OUT_SEED,
    TrainStream,
    generate,
    held_out_split,
    iter_problems,
)
from training.data.gsm8k import (
    ExampleList,
    load_examples,
    parse_number,
    read_aug_records,
    read_gsm8k_aug_txt,
    read_gsm8k_jsonl,
    same_number,
)

__all__ = [
    "HELD_OUT_SEED",
    "ExampleList",
    "TrainStream",
    "generate",
    "held_out_split",
    "iter_problems",
    "load_examples",
    "parse_number",
    "read_aug_records",
    "read_gsm8k_aug_txt",
    "read_gsm8k_jsonl",
    "same_number",
]
