"""The context budget: does a request's prompt + latents + answer fit the model's positions?

Counted in tokens, exactly as `kava.generate.solve_batch` lays a request out: latent mode
uses `Q <bot>` + M latent slots + `<eot> P` + the answer; cot mode `Q` + the answer. A
question that would not fit is refused with a 422 that gives the numbers, before it is
queued; an omitted `max_new_tokens` shrinks to the room that is left. Each adapter's budget
is built once, on the engine thread (the only thread that touches the model), around a
private copy of its tokenizer so the event loop can tokenise while the engine runs. Does not
own the request's other bounds (`server.schemas`) nor the engine.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from dataclasses import dataclass
from typing import Any

from kava.config import Mode
from kava.prompts import prompt_ids, question_ids
from server.async_engine import AsyncEngine
from server.errors import invalid

log = logging.getLogger(__name__)

INLINE_CHARS = 4096  # longer questions are tokenised off the event loop


@dataclass(frozen=True)
class ContextBudget:
    tokenizer: Any  # a private copy of the adapter's tokenizer
    num_latents: int  # M
    suffix_tokens: int  # `<eot> P`: the end-of-thought token and the answer prompt
    max_positions: int | None  # the base model's context; None = unbounded

    @classmethod
    def of(cls, model: Any) -> ContextBudget:
        """The budget of a `kava.backbone.KavaModel`."""
        config = getattr(model.lm, "config", None)
        limit = getattr(config, "max_position_embeddings", None)
        return cls(
            tokenizer=copy.deepcopy(model.tokenizer),
            num_latents=model.config.num_latents,
            suffix_tokens=1 + len(prompt_ids(model.tokenizer, model.config)),
            max_positions=limit if isinstance(limit, int) and limit > 0 else None,
        )

    def question_tokens(self, question: str) -> int:
        return len(question_ids(self.tokenizer, question))

    def overhead(self, mode: Mode) -> int:
        """Positions a request of `mode` takes besides its question and its answer."""
        return 1 + self.num_latents + self.suffix_tokens if mode == "latent" else 0

    def max_new_tokens(self, question_tokens: int, mode: Mode, asked: int | None, default: int) -> int:
        """The answer length to run with: `asked`, or `default` cut to the room left; raises
        a 422 naming the numbers when it does not fit."""
        if self.max_positions is None:
            return asked if asked is not None else default
        taken = question_tokens + self.overhead(mode)
        room = self.max_positions - taken
        layout = (
            f"question {question_tokens} + <bot> 1 + latents {self.num_latents} + <eot> and answer prompt "
            f"{self.suffix_tokens}"
            if mode == "latent"
            else f"question {question_tokens}"
        )
        if room < 1:
            longest = self.max_positions - self.overhead(mode) - 1
            raise invalid(
                "question",
                f"question is too long for the model's context: {layout} = {taken} tokens, and the model has "
                f"{self.max_positions} positions for prompt, latents and answer together (in {mode} mode a question "
                f"may have at most {longest} tokens)",
            )
        if asked is None:
            return min(default, room)
        if asked > room:
            raise invalid(
                "max_new_tokens",
                f"max_new_tokens={asked} does not fit the model's context: {layout} = {taken} tokens, and the "
                f"model has {self.max_positions} positions, so at most {room} answer tokens fit",
            )
        return asked

    async def count(self, question: str) -> int:
        if len(question) <= INLINE_CHARS:
            return self.question_tokens(question)
        return await asyncio.to_thread(self.question_tokens, question)


class Budgets:
    """Each adapter's budget, built on first use on the engine thread and kept until the
    adapter is loaded or unloaded again (`forget`)."""

    def __init__(self, engine: AsyncEngine):
        self._engine = engine
        self._known: dict[str, ContextBudget | None] = {}

    async def get(self, name: str) -> ContextBudget | None:
        if name not in self._known:
            self._known[name] = await self._engine.call(lambda runner: _budget_of(runner, name))
        return self._known[name]

    def forget(self, name: str) -> None:
        self._known.pop(name, None)


def _budget_of(runner: Any, name: str) -> ContextBudget | None:
    try:
        model = runner._model(name)  # ModelRunner has no public accessor for a model by name (yet)
    except AttributeError:  # a runner that holds no KavaModel (a test double): nothing to count with
        log.debug("runner %r has no models to size a context budget from", type(runner).__name__)
        return None
    return ContextBudget.of(model)
