"""How examples become token sequences for the two modes (METHOD.md §1).

Owns the text layout (`Q C P A <eos>` for the teacher, `Q <bot> z.. <eot> P A <eos>` for
the student, and under a training curriculum `Q <bot> z.. <eot> C_{k+1..n} P A <eos>`),
the special-token ids, and padding into batches: left padding for anything that is decoded
from (prefixes), right padding for teacher-forced tails. Each segment is tokenised on its
own and the ids are concatenated, so a segment's tokens never depend on its neighbours.
Does not own the model, any forward pass, or when a curriculum moves on (`training/`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from kava.config import MethodConfig

BOT, EOT, LATENT = "<bot>", "<eot>", "<latent>"
SPECIAL_TOKENS: tuple[str, str, str] = (BOT, EOT, LATENT)
IGNORE = -100


@dataclass(frozen=True)
class Example:
    """One problem in GSM8k-AUG layout: question, reasoning steps, final answer."""

    question: str
    steps: tuple[str, ...]
    answer: str


@dataclass(frozen=True)
class TokenIds:
    bot: int
    eot: int
    latent: int
    eos: int
    pad: int

    @classmethod
    def from_tokenizer(cls, tokenizer) -> TokenIds:
        ids = tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))
        unk = getattr(tokenizer, "unk_token_id", None)
        missing = [t for t, i in zip(SPECIAL_TOKENS, ids) if i is None or (unk is not None and i == unk)]
        if missing:
            raise ValueError(f"tokenizer lacks special token(s) {missing}; load it through kava.backbone")
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ValueError("tokenizer has no eos_token; set one before using it with kava")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        return cls(bot=ids[0], eot=ids[1], latent=ids[2], eos=eos, pad=pad)


# 1. Text segments -----------------------------------------------------------------------
def trace_steps(steps: Sequence[str], config: MethodConfig) -> list[str]:
    """The steps C is made of: none without a trace, the last one dropped when the config says so."""
    if not config.uses_trace:
        return []
    return list(steps[:-1]) if config.drop_last_step and len(steps) > 1 else list(steps)


def steps_text(steps: Sequence[str]) -> str:
    return (" " + " ".join(s.strip() for s in steps)) if steps else ""


def trace_text(steps: Sequence[str], config: MethodConfig) -> str:
    """The CoT segment C, with the last step dropped when the config says so."""
    return steps_text(trace_steps(steps, config))


def prompt_text(config: MethodConfig) -> str:
    return " " + config.answer_prompt.strip()


def answer_text(answer: str) -> str:
    return " " + str(answer).strip()


def _ids(tokenizer, text: str, *, specials: bool = False) -> list[int]:
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=specials)["input_ids"])


def question_ids(tokenizer, question: str) -> list[int]:
    """Q with the tokenizer's own BOS convention (Llama adds one, GPT-2/Qwen2 do not)."""
    return _ids(tokenizer, question.strip(), specials=True)


def prompt_ids(tokenizer, config: MethodConfig) -> list[int]:
    return _ids(tokenizer, prompt_text(config))


# 2. Padding ------------------------------------------------------------------------------
def pad_left(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) ids and 0/1 mask with padding on the left, so every row ends at column L-1."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r) :] = 1
    return ids, mask


def pad_right(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
    return ids, mask


def positions(mask: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
    """Position ids that count only real tokens: (B, L) from a (B, L) mask, optionally
    continuing from `offset` (B,) real tokens already in the cache. Pads get position 0
    (they are masked, so the value only has to be a valid index)."""
    pos = mask.long().cumsum(-1) - 1  # (B, L)
    if offset is not None:
        pos = pos + offset[:, None]
    return pos.clamp(min=0) * mask.long()


# 3. Batches ------------------------------------------------------------------------------
@dataclass
class PrefixBatch:
    """Left-padded prompts to decode from: `Q <bot>` (student) or `Q` (teacher)."""

    input_ids: torch.Tensor  # (B, Lq)
    attention_mask: torch.Tensor  # (B, Lq)

    @property
    def lengths(self) -> torch.Tensor:  # (B,) real tokens per row
        return self.attention_mask.sum(-1)

    def to(self, device: torch.device | str) -> PrefixBatch:
        return PrefixBatch(self.input_ids.to(device), self.attention_mask.to(device))


def encode_prefixes(tokenizer, questions: Sequence[str], ids: TokenIds, *, with_bot: bool) -> PrefixBatch:
    rows = [question_ids(tokenizer, q) + ([ids.bot] if with_bot else []) for q in questions]
    input_ids, mask = pad_left(rows, ids.pad)
    return PrefixBatch(input_ids, mask)


@dataclass
class TrainBatch:
    """Everything one training step reads, for both modes.

    Teacher rows are right-padded `Q C P A <eos>`; the student reads a left-padded
    `Q <bot>` prefix, M latent slots, then a right-padded `<eot> P A <eos>` suffix.
    """

    teacher_ids: torch.Tensor  # (B, Lt)
    teacher_mask: torch.Tensor  # (B, Lt)
    teacher_labels: torch.Tensor  # (B, Lt) next-token targets aligned to inputs, IGNORE off C P A <eos>
    cot_mask: torch.Tensor  # (B, Lt) bool: positions of C
    answer_mask: torch.Tensor  # (B, Lt) bool: positions of P A (the queries R-KV scores with)
    teacher_codi_pos: torch.Tensor  # (B,) position predicting the first answer digit
    kv_cot_mask: torch.Tensor  # (B, Lt) bool: the C positions KV distillation compresses (curriculum: first k steps)
    prefix: PrefixBatch  # (B, Lq) `Q <bot>`
    suffix_ids: torch.Tensor  # (B, La) `<eot> P A <eos>`, or `<eot> C_{k+1..n} P A <eos>` in curriculum stage k
    suffix_mask: torch.Tensor  # (B, La)
    suffix_labels: torch.Tensor  # (B, La)
    student_codi_pos: torch.Tensor  # (B,) the same position, counted in the suffix
    steps: StepBatch | None = None  # step supervision rows (`MethodConfig.uses_step_loss`)

    def to(self, device: torch.device | str) -> TrainBatch:
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()}
        moved["prefix"] = self.prefix.to(device)
        moved["steps"] = self.steps.to(device) if self.steps is not None else None
        return TrainBatch(**moved)


@dataclass
class StepBatch:
    """Step supervision (SIM-CoT-style): row i asks latent slot `slot[i]` of example `row[i]`,
    projected to an input vector and seen alone, to decode one written step `z C_k`."""

    ids: torch.Tensor  # (K, Ls) right-padded step tokens
    mask: torch.Tensor  # (K, 1 + Ls) the latent vector, then the step tokens
    labels: torch.Tensor  # (K, 1 + Ls) aligned to the inputs: position i predicts step token i
    row: torch.Tensor  # (K,) which example
    slot: torch.Tensor  # (K,) which latent slot

    def to(self, device: torch.device | str) -> StepBatch:
        return StepBatch(*(t.to(device) for t in (self.ids, self.mask, self.labels, self.row, self.slot)))


def step_slots(num_steps: int, num_latents: int) -> list[int]:
    """The latent slot that holds each of `num_steps` steps: the last of M/S equal groups
    (M = 12: 3 steps -> 3, 7, 11; 4 steps -> 2, 5, 8, 11), so the last step lands on the last slot."""
    return [-(-(k + 1) * num_latents // num_steps) - 1 for k in range(num_steps)]


def encode_steps(tokenizer, step_lists: Sequence[Sequence[str]], num_latents: int, pad: int) -> StepBatch | None:
    """One row per (example, step); None when no example has a step."""
    rows, owners, slots = [], [], []
    for b, steps in enumerate(step_lists):
        for step, slot in zip(steps, step_slots(len(steps), num_latents)):
            rows.append(_ids(tokenizer, steps_text([step])))
            owners.append(b)
            slots.append(slot)
    if not rows:
        return None
    ids, mask = pad_right(rows, pad)
    labels = torch.full((len(rows), ids.shape[1] + 1), IGNORE, dtype=torch.long)
    for i, r in enumerate(rows):
        labels[i, : len(r)] = torch.tensor(r)
    mask = torch.cat([mask.new_ones((len(rows), 1)), mask], dim=1)
    return StepBatch(ids, mask, labels, torch.tensor(owners), torch.tensor(slots))


def _shifted_labels(rows: list[list[int]], starts: list[int], width: int) -> torch.Tensor:
    """Labels aligned with inputs: label[i] = token i+1 when token i+1 is supervised."""
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for b, (r, s) in enumerate(zip(rows, starts)):
        for i in range(max(s - 1, 0), len(r) - 1):
            labels[b, i] = r[i + 1]
    return labels


@dataclass
class TeacherBatch:
    """Right-padded `Q C P A <eos>` rows with the masks the objective reads."""

    ids: torch.Tensor  # (B, Lt)
    mask: torch.Tensor  # (B, Lt)
    labels: torch.Tensor  # (B, Lt) next-token targets aligned to inputs, IGNORE off C P A <eos>
    cot_mask: torch.Tensor  # (B, Lt) bool: positions of C
    answer_mask: torch.Tensor  # (B, Lt) bool: positions of P A
    codi_pos: torch.Tensor  # (B,) the position that predicts the first answer digit (see codi_offset)


def codi_offset(tokenizer, answer_ids: Sequence[int]) -> int:
    """How many leading answer tokens are bare whitespace. Tokenizers that split digits
    from the space before them (Llama-3, the built-in BPE) emit `" "` first; the CODI
    position is then that lone-space token, whose next prediction is the first digit,
    not the prompt's `:` (which only predicts the space)."""
    n = 0
    for t in answer_ids:
        if tokenizer.decode([t]).strip():
            break
        n += 1
    return min(n, max(len(answer_ids) - 1, 0))


def encode_teacher(tokenizer, examples: Sequence[Example], config: MethodConfig, eos: int, pad: int) -> TeacherBatch:
    """Teacher-mode rows only; needs no method tokens (so a backbone can pretrain on it)."""
    p_ids = prompt_ids(tokenizer, config)
    rows, spans, starts, leads = [], [], [], []
    for ex in examples:
        q = question_ids(tokenizer, ex.question)
        c = _ids(tokenizer, trace_text(ex.steps, config))
        a = _ids(tokenizer, answer_text(ex.answer))
        rows.append(q + c + p_ids + a + [eos])
        leads.append(codi_offset(tokenizer, a))
        spans.append((len(q), len(q) + len(c), len(q) + len(c) + len(p_ids) + len(a)))
        starts.append(len(q))
    ids, mask = pad_right(rows, pad)
    cot_mask = torch.zeros_like(ids, dtype=torch.bool)
    answer_mask = torch.zeros_like(ids, dtype=torch.bool)
    codi_pos = torch.zeros(len(examples), dtype=torch.long)
    for b, (c0, c1, a1) in enumerate(spans):
        cot_mask[b, c0:c1] = True
        answer_mask[b, c1:a1] = True
        codi_pos[b] = c1 + len(p_ids) - 1 + leads[b]
    return TeacherBatch(ids, mask, _shifted_labels(rows, starts, ids.shape[1]), cot_mask, answer_mask, codi_pos)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _step_rows(tokenizer, examples, config: MethodConfig, pad: int, written_from: int | None) -> StepBatch | None:
    """Step supervision over the steps the latents replace (all, or the first k in stage k)."""
    replaced = [trace_steps(ex.steps, config)[:written_from] for ex in examples]
    return encode_steps(tokenizer, replaced, config.num_latents, pad)


def encode_training_batch(
    tokenizer,
    examples: Sequence[Example],
    config: MethodConfig,
    ids: TokenIds,
    *,
    written_from: int | None = None,
) -> TrainBatch:
    """Both modes' rows for one training step.

    `written_from=k` is curriculum stage k (Coconut/iCoT-style): the student still writes
    the trace steps k+1..n after `<eot>` (`Q <bot> z_1..z_M <eot> C_{k+1..n} P A <eos>`,
    CE on all of it), its CODI position moves right by their length, and KV distillation
    compresses only the teacher's tokens of steps 1..k, the ones the latents replace. n
    counts the trace's steps (after `drop_last_step`); a row with n <= k is the plain
    format. `None` (the default) is the plain KaVa objective. The teacher rows never change.
    """
    if written_from is not None and (not isinstance(written_from, int) or written_from < 0):
        raise ValueError(f"written_from={written_from!r}: must be an integer >= 0 (steps replaced by latents) or None")
    teacher = encode_teacher(tokenizer, examples, config, ids.eos, ids.pad)
    p_ids = prompt_ids(tokenizer, config)
    answers = [_ids(tokenizer, answer_text(ex.answer)) for ex in examples]
    kv_cot_mask = teacher.cot_mask.clone()
    written: list[list[int]] = [[] for _ in examples]
    if written_from is not None:
        for b, ex in enumerate(examples):
            steps = trace_steps(ex.steps, config)
            written[b] = _ids(tokenizer, steps_text(steps[written_from:]))
            if written_from < len(steps):
                # the first k steps' tokens inside C, tokenised as C was (one segment); a token
                # straddling the boundary would belong to both, so the common prefix leaves it out
                c = _ids(tokenizer, steps_text(steps))
                n_first = _common_prefix(_ids(tokenizer, steps_text(steps[:written_from])), c)
                c0 = int(teacher.cot_mask[b].long().argmax()) if teacher.cot_mask[b].any() else 0
                kv_cot_mask[b, c0 + n_first :] = False
    suffix_rows = [[ids.eot] + w + p_ids + a + [ids.eos] for w, a in zip(written, answers)]
    s_ids, s_mask = pad_right(suffix_rows, ids.pad)
    return TrainBatch(
        teacher_ids=teacher.ids,
        teacher_mask=teacher.mask,
        teacher_labels=teacher.labels,
        cot_mask=teacher.cot_mask,
        answer_mask=teacher.answer_mask,
        teacher_codi_pos=teacher.codi_pos,
        kv_cot_mask=kv_cot_mask,
        prefix=encode_prefixes(tokenizer, [ex.question for ex in examples], ids, with_bot=True),
        suffix_ids=s_ids,
        suffix_mask=s_mask,
        suffix_labels=_shifted_labels(suffix_rows, [1] * len(suffix_rows), s_ids.shape[1]),
        student_codi_pos=torch.tensor(
            [len(w) + len(p_ids) + codi_offset(tokenizer, a) for w, a in zip(written, answers)]
        ),
        steps=_step_rows(tokenizer, examples, config, ids.pad, written_from) if config.uses_step_loss else None,
    )
