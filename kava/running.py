"""Inference fast path, the method half: a running batch that rows join and leave between passes.

Owns `Running`, the method's phases as per-row state over `kava.fastlm`: each `step()` is
ONE forward pass over every running row, whatever phase it is in —

  1. prefill   `Q <bot>` + the init pass's M `<latent>` placeholders (latent mode; T > 0),
               `Q <bot>` alone (T = 0 or sequential), or `Q` (cot mode)
  2. latent    Jacobi pass k = 1..T: slots z = prj(shift(h)) written over the previous
               pass's slots on the prefix (`kava.latent.shift_update`); the last pass also
               carries `<eot> P`. T = 0: the init pass itself carries `<eot> P`. Sequential
               mode: one slot z_j = prj(h_{j-1}) per pass instead.
  3. decode    one fed-back answer token; greedy, the method tokens never emitted

— so rows of different modes, iteration counts and lengths share a pass, their tokens
packed back to back. A row's tokens sit at cache indices 0.. of its own slot (no padding;
position id = cache index), so a row computes what it would alone. One host sync per pass:
the sampled token ids (a pass that samples nothing waits for the device on CUDA only, so
phase times stay honest). A finished row leaves at the end of its pass and frees its slot;
`leave()` drops a row between passes (cancelled, deadline). `solve_batch` runs this to
completion for a fixed batch; the server's engine drives it one pass at a time.

With `graphs=True` the passes where every row adds as many tokens run at fixed shapes, as CUDA
graphs on a CUDA device (`kava.graphs`). Does not own the model's forward (`kava.fastlm`),
scheduling, or the reference path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from kava.answers import extract_answer
from kava.backbone import KavaModel
from kava.config import MODES, Mode
from kava.fastlm import KVCache, Plan, Staging, fast_lm, forward
from kava.graphs import PassGraphs, bucket
from kava.latent import shift_update
from kava.prompts import prompt_ids, question_ids
from kava.results import PHASES, SolveResult, nearest_tokens


@dataclass(frozen=True)
class Ask:
    """One question for the running batch."""

    question: str
    mode: Mode = "latent"
    max_new_tokens: int = 64
    num_iterations: int | None = None  # T; None = the adapter's own
    sequential: bool | None = None  # None = the adapter's own
    return_latents: bool = False
    stream: bool = False  # give each new token's text (`Token.text`)


@dataclass
class Row:
    """One request inside the running batch."""

    ask: Ask
    tag: object  # the caller's handle (a question index, a server job)
    ids: list[int]  # the prompt: `Q <bot>` or `Q`
    m: int  # latent slots (0 in cot mode)
    t: int  # Jacobi iterations
    sequential: bool
    slot: int = -1
    phase: str = "prefill"
    k: int = 0  # latent passes done (the init pass counts; sequential: latents done)
    length: int = 0  # tokens it holds in the cache (what the next pass attends to)
    tokens: list[int] = field(default_factory=list)
    finish: str | None = None  # stop | length | cancelled (or the caller's reason)
    passes: int = 0
    times: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    joined_at: float = 0.0
    first_token_at: float | None = None
    latents: list[torch.Tensor] = field(default_factory=list)  # slot inputs of the last pass (return_latents)
    _shown: tuple[int, int] = (0, 0)  # incremental detokenisation (prefix, read) offsets

    @property
    def last_latent(self) -> bool:
        return self.k == (self.m - 1 if self.sequential else self.t)


@dataclass(frozen=True)
class Token:
    row: Row
    id: int
    text: str  # its text ("" until a multi-byte character completes, or when not streaming)


@dataclass
class PassOutput:
    """What one `step()` did."""

    rows: int  # rows in the pass
    phases: dict[str, int]  # rows per phase
    wall_s: float
    tokens: list[Token]  # answer tokens sampled in this pass
    finished: list[Row]  # rows that left at the end of it (their results: `Running.result`)


@dataclass
class _Chunk:
    """A row's inputs to one pass: `vectors` latent slot inputs first, then token ids."""

    vectors: int
    tokens: list[int]
    keep: int  # tokens the row still holds after the pass (Jacobi slots are overwritten)
    reads: list[tuple[int, int]]  # (chunk offset, latent-state index) whose hidden state is kept
    sample: bool  # logits of the last position give the next answer token

    @property
    def n(self) -> int:
        return self.vectors + len(self.tokens)


class Running:
    """The running batch of one adapter. Not thread-safe: one thread owns it."""

    def __init__(self, model: KavaModel, *, rows: int = 8, length: int = 256, graphs: bool = False):
        """`graphs`: run uniform passes at fixed shapes (`kava.graphs`), captured as CUDA graphs
        on a CUDA device; the cache then keeps a bucket's worth of rows for the padding."""
        self.model = model
        self.lm = fast_lm(model)
        cfg, tok = model.config, model.tokenizer
        self.suffix = [model.ids.eot, *prompt_ids(tok, cfg)]  # `<eot> P`, the same for every row
        self.cache = KVCache(self.lm, (bucket(rows) or rows) if graphs else rows, length)
        widest = cfg.num_latents + len(self.suffix)  # the last Jacobi pass; a prefill stays packed
        self.graphs = PassGraphs(self.lm, self.cache, widest) if graphs else None
        self.staging = Staging(model.device)  # the passes' index lists, sent without waiting
        # per slot: [h(<bot>), h(slot 1), ..., h(slot M)], last layer after the final norm
        self.state = torch.zeros(rows, cfg.num_latents + 1, model.hidden_size, dtype=self.lm.dtype, device=model.device)
        self.rows: list[Row] = []

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def held_bytes(self) -> int:
        """KV bytes the running rows hold now (their own tokens)."""
        return sum(r.length for r in self.rows) * self.lm.bytes_per_token

    # Joining and leaving -----------------------------------------------------------------
    def join(self, ask: Ask, tag: object = None) -> Row:
        """Queue `ask` into the next pass (its prefill); grows the cache when needed."""
        if ask.mode not in MODES:
            raise ValueError(f"mode={ask.mode!r}: must be one of {MODES}")
        cfg = self.model.config
        latent = ask.mode == "latent"
        ids = question_ids(self.model.tokenizer, ask.question) + ([self.model.ids.bot] if latent else [])
        t = cfg.num_iterations if ask.num_iterations is None else ask.num_iterations
        seq = cfg.sequential if ask.sequential is None else ask.sequential
        row = Row(ask, tag, ids, cfg.num_latents if latent else 0, t, seq, joined_at=time.perf_counter())
        need = len(ids) + (row.m + len(self.suffix) if latent else 0) + max(ask.max_new_tokens - 1, 0)
        self._reserve(len(self.rows) + 1, need)
        row.slot = len(self.rows)
        self.rows.append(row)
        return row

    def leave(self, row: Row, reason: str = "cancelled") -> None:
        """Take `row` out between passes; the last row moves into its slot."""
        if row.finish is None:
            row.finish = reason
        i, last = row.slot, len(self.rows) - 1
        assert self.rows[i] is row, "not a running row"
        if i != last:
            moved = self.rows[last]
            self.cache.move(last, i)
            self.state[i] = self.state[last]
            moved.slot, self.rows[i] = i, moved
        self.rows.pop()
        row.slot = -1

    def _reserve(self, rows: int, length: int) -> None:
        if self.graphs is not None:
            rows = bucket(rows) or rows  # padding rows write slots of their own
        if rows > self.cache.rows or length > self.cache.length:
            grow_rows = rows if rows <= self.cache.rows else max(rows, 2 * self.cache.rows)
            grow_len = length if length <= self.cache.length else max(length, 2 * self.cache.length)
            self.cache.grow(grow_rows, grow_len)
        if rows > self.state.shape[0]:
            more = self.state.new_zeros((self.cache.rows - self.state.shape[0], *self.state.shape[1:]))
            self.state = torch.cat([self.state, more])

    # One pass ----------------------------------------------------------------------------
    def _chunk(self, row: Row) -> _Chunk:
        m, lq = row.m, len(row.ids)
        if row.phase == "decode":
            return _Chunk(0, row.tokens[-1:], 1, [], True)
        if row.phase == "prefill":
            if row.m == 0:  # cot
                return _Chunk(0, row.ids, lq, [], True)
            fused = not row.sequential and row.t > 0  # the init pass rides in the prefill pass
            slots = [self.model.ids.latent] * m if fused else []
            reads = [(lq - 1, 0)] + [(lq + j, 1 + j) for j in range(len(slots))]
            return _Chunk(0, row.ids + slots, lq, reads, False)
        last = row.last_latent
        suffix = self.suffix if last else []
        if row.sequential:  # z_{k+1} = prj(h_k)
            return _Chunk(1, suffix, 1 + len(suffix), [(0, row.k + 1)], last)
        slots = [(j, 1 + j) for j in range(m)]
        if row.k == 0:  # the init pass on its own (T = 0): placeholders are the <latent> row
            return _Chunk(0, [self.model.ids.latent] * m + suffix, m + len(suffix), slots, last)
        return _Chunk(m, suffix, m + len(suffix) if last else 0, slots, last)

    @torch.inference_mode()
    def step(self) -> PassOutput:
        """One forward pass over every running row; finished rows leave at its end."""
        t0 = time.perf_counter()
        rows = list(self.rows)
        assert rows, "step() needs a running row"
        model, lm, dev = self.model, self.lm, self.model.device
        chunks = [self._chunk(r) for r in rows]
        self.staging.reset()  # the last pass ended with a host sync: nothing is still reading the buffer
        starts, counts = [r.length for r in rows], [c.n for c in chunks]
        fixed = self.graphs is not None and self.graphs.fits(counts)
        plan = None if fixed else Plan.build(starts, counts, dev, self.staging.send)
        width = self.state.shape[1]  # M + 1
        # 1. inputs, packed row after row: token embeddings, then the latent slot inputs
        tok_pos, tok_ids, jac, seq, reads, samples = [], [], [], [], [], []
        off = 0
        for r, c in zip(rows, chunks):
            tok_pos += range(off + c.vectors, off + c.n)
            tok_ids += c.tokens
            if c.vectors and r.sequential:
                seq.append((r, off))
            elif c.vectors:
                jac.append((r, off))
            reads += [(off + o, r.slot * width + s) for o, s in c.reads]
            if c.sample:
                samples.append((r, off + c.n - 1))
            off += c.n
        sp = [r for r, _ in seq]
        host = [tok_pos, tok_ids, [r.slot for r, _ in jac], [o + j for r, o in jac for j in range(r.m)],
                [r.slot for r in sp], [r.k for r in sp], [o for _, o in seq],
                [p for p, _ in reads] + [p for _, p in samples], [s for _, s in reads]]  # fmt: skip
        tok_pos_t, tok_ids_t, jac_slots, jac_at, seq_slots, seq_k, seq_at, keep_at, state_at = self.staging.send(host)
        x = torch.empty(off, model.hidden_size, dtype=lm.dtype, device=dev)  # (N, D)
        if tok_ids:
            specials = any(r.phase != "decode" for r in rows)  # fed-back answer tokens never are
            x.index_copy_(0, tok_pos_t, lm.embed(tok_ids_t, specials))
        latents = {}
        if jac:
            z = shift_update(model, self.state[jac_slots, 0], self.state[jac_slots, 1:]).to(lm.dtype)  # (Bj, M, D)
            x.index_copy_(0, jac_at, z.flatten(0, 1))
            latents.update({id(r): z[i] for i, (r, _) in enumerate(jac)})
        if seq:
            z = model.project(self.state[seq_slots, seq_k]).to(lm.dtype)  # (Bs, D)
            x.index_copy_(0, seq_at, z)
            latents.update({id(r): z[i : i + 1] for i, r in enumerate(sp)})
        # 2. the pass
        if plan is None:
            h = self.graphs.run(x, starts, counts, self.staging.send)  # (N, D)
        else:
            h = forward(lm, self.cache, x, plan)  # (N, D)
        # 3. what the rows keep: latent states, then one batched greedy pick
        keep = lm.final_norm(h[keep_at])  # (K, D)
        if reads:
            self.state.view(-1, model.hidden_size).index_copy_(0, state_at, keep[: len(reads)])
        next_ids: list[int] = []
        if samples:
            logits = lm.logits(keep[len(reads) :]).float().index_fill_(-1, lm.special_ids, float("-inf"))
            next_ids = logits.argmax(-1).tolist()  # the pass's one host sync
        elif dev.type == "cuda":
            torch.cuda.synchronize(dev)
        now = time.perf_counter()
        # 4. bookkeeping
        phases = dict.fromkeys(PHASES, 0)
        for r, c in zip(rows, chunks):
            phases[r.phase] += 1
            r.times[r.phase] += now - t0
            r.passes += 1
            r.length += c.keep
            if r.ask.return_latents and id(r) in latents:
                r.latents = [*r.latents, latents[id(r)]] if r.sequential else [latents[id(r)]]
            elif r.ask.return_latents and r.phase == "latent" and r.k == 0:
                r.latents = [model.latent_placeholders(1, r.m)[0]]
            if r.phase == "latent":
                r.k += 1
            elif r.phase == "prefill" and r.m:
                r.k = 1 if not r.sequential and r.t > 0 else 0
            if r.phase == "prefill" and r.m:
                r.phase = "latent"
        tokens, finished = [], []
        for (r, _), tok in zip(samples, next_ids):
            if r.first_token_at is None:
                r.first_token_at = now
            r.phase = "decode"
            if len(r.tokens) >= r.ask.max_new_tokens:  # max_new_tokens == 0
                r.finish = "length"
            else:
                r.tokens.append(tok)
                tokens.append(Token(r, tok, self._text(r) if r.ask.stream else ""))
                if tok == model.ids.eos:
                    r.finish = "stop"
                elif len(r.tokens) >= r.ask.max_new_tokens:
                    r.finish = "length"
            if r.finish is not None:
                finished.append(r)
        for r in finished:
            self.leave(r, r.finish)
        return PassOutput(len(rows), phases, now - t0, tokens, finished)

    def _text(self, row: Row) -> str:
        """The text `row`'s newest token adds (TGI's incremental detokenisation: decode a
        short window, hold back an incomplete multi-byte character)."""
        prefix, read = row._shown
        tok = self.model.tokenizer
        before = tok.decode(row.tokens[prefix:read], skip_special_tokens=True)
        after = tok.decode(row.tokens[prefix:], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            row._shown = (read, len(row.tokens))
            return after[len(before) :]
        return ""

    # Results -----------------------------------------------------------------------------
    def result(self, row: Row) -> SolveResult:
        """A row's answer and costs (for a row that finished or left)."""
        model = self.model
        text = model.tokenizer.decode(row.tokens, skip_special_tokens=True)
        nearest = None
        if row.ask.return_latents and row.latents:
            nearest = nearest_tokens(model, torch.cat(row.latents)[None])[0]
        return SolveResult(
            text=text.strip(),
            answer=extract_answer(text, model.config.answer_prompt),
            finish_reason=row.finish or "cancelled",
            prompt_tokens=len(row.ids),
            latent_tokens=row.m,
            generated_tokens=len(row.tokens),
            forward_passes=row.passes,
            # the last generated token is never fed back, so it never occupies the cache
            kv_cache_bytes=row.length * self.lm.bytes_per_token,
            latent_nearest_tokens=nearest,
        )
