"""The OpenAI-compatible routes: `POST /v1/chat/completions` and `POST /v1/completions` (whole,
or streamed as server-sent events) and `GET /v1/models`, thin over the solve path.

A request becomes one `SolveRequest` (`server.openai_schemas`) and runs through
`server.routes.solve_job` (streamed: `admit_job`, then `AsyncEngine.stream`): the same key
check, admission, limits, queue, deadline, disconnect handling and metrics as `/v1/solve`.
Errors keep the project's envelope (the openai package reads `error.message`), with the
field named as the OpenAI request names it (`model`, `messages` / `prompt`, `max_tokens`).
A stream is `data: {chunk}` events in OpenAI's chunk format, one content chunk per decoded
token as the engine produces it, the `kava` costs on the chunk that carries
`finish_reason`, a usage chunk (no choices) when `stream_options.include_usage` is set,
then `data: [DONE]`; the stream starts at the first token. `open_answer_stream` is the one
place that knows where streamed text comes from. Does not own the engine or its bridge to
the event loop (`server.async_engine`), the wire types or the error envelope.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ValidationError

from server.batch import Job, JobResult
from server.context import ServerContext
from server.errors import ApiError, describe_validation, invalid, not_found, unavailable
from server.openai_schemas import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    ChatMessageOut,
    Completion,
    CompletionChoice,
    CompletionRequest,
    CompletionUsage,
    FinishReason,
    KavaCosts,
    Model,
    ModelList,
)
from server.routes import ERRORS, admit_job, client_gone, require_key, solve_job, solve_response
from server.schemas import ErrorBody, ErrorEnvelope, SolveRequest, SolveResponse

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
OPENAI_SOLVE_PATHS = (CHAT_PATH, COMPLETIONS_PATH)
STREAM = {
    200: {
        "description": "the completion as JSON, or with `stream: true` as server-sent events ending in `data: [DONE]`",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}

router = APIRouter(prefix="/v1", dependencies=[Depends(require_key)], responses=ERRORS)


# Where streamed text comes from ------------------------------------------------------------
@dataclass(frozen=True)
class Finished:
    """The last item of an answer stream: the job and its result (usage, costs, finish reason)."""

    job: Job
    result: JobResult


class _Strip:
    """Feeds token texts out so that they join to `text.strip()`, as the whole answer does:
    leading whitespace is dropped, trailing whitespace held until more text follows."""

    def __init__(self) -> None:
        self.started, self.held = False, ""

    def feed(self, text: str) -> str:
        if not self.started:
            text = text.lstrip()
            self.started = bool(text)
        body = text.rstrip()
        if not body:
            self.held += text
            return ""
        out, self.held = self.held + body, text[len(body) :]
        return out


async def open_answer_stream(solve: SolveRequest, request: Request) -> AsyncIterator[str | Finished]:
    """Run `solve` and return its answer as text pieces, one per decoded token (possibly
    empty), then `Finished`.

    The tokens come from `AsyncEngine.stream`. This returns once the first token exists, so
    everything that can fail before it (limits, unknown adapter, queue full, deadline, engine
    failure) raises ApiError here and still gets an HTTP status; a failure after it reaches
    the stream as an error event. Closing the stream (the client went away) cancels the job."""
    ctx = _ctx(request)
    job = await admit_job(solve, request)
    pieces = _pieces(ctx, job, ctx.async_engine.stream(job, client_gone(request)))
    try:
        first = await anext(pieces)
    except BaseException:
        await pieces.aclose()
        raise
    return _chain(first, pieces)


async def _pieces(
    ctx: ServerContext, job: Job, tokens: AsyncIterator[str | JobResult]
) -> AsyncIterator[str | Finished]:
    strip, sent, answered = _Strip(), "", False
    try:
        async for item in tokens:
            if isinstance(item, str):
                piece = strip.feed(item)
                sent += piece
                yield piece
                continue
            answered = True
            ctx.count_answer(job, "ok")
            text = item.result.text
            if text != sent and text.startswith(sent):  # anything the hook did not carry
                yield text[len(sent) :]
            yield Finished(job, item)
    except (GeneratorExit, asyncio.CancelledError):  # the client went away (an ApiError is counted where it is sent)
        if not answered:
            ctx.count_answer(job, "cancelled")
        raise
    finally:
        await tokens.aclose()  # drops the job if it still runs


async def _chain(first: str | Finished, rest: AsyncIterator[str | Finished]) -> AsyncIterator[str | Finished]:
    try:
        yield first
        async for item in rest:
            yield item
    finally:
        await rest.aclose()


# Errors: the envelope, with OpenAI's field names -------------------------------------------
@contextmanager
def _openai_names(names: dict[str, tuple[str, str]]) -> Iterator[None]:
    """Re-raise the solve path's errors naming OpenAI's fields: `names` maps a SolveRequest
    field to (the OpenAI field, the words that replace the field's name in the message)."""
    try:
        yield
    except ValidationError as exc:  # SolveRequest's own static rules
        param, message = describe_validation(list(exc.errors()))
        raise _renamed(invalid(param, message), names) from exc
    except ApiError as exc:
        raise _renamed(exc, names) from exc


def _renamed(exc: ApiError, names: dict[str, tuple[str, str]]) -> ApiError:
    if exc.param not in names:
        return exc
    param, words = names[exc.param]
    message = exc.message.replace(exc.param, words, 1)
    return ApiError(exc.status, exc.type, message, param, exc.headers)


def _names(question: tuple[str, str], max_tokens: str) -> dict[str, tuple[str, str]]:
    return {
        "adapter": ("model", "model"),
        "question": question,
        "max_new_tokens": (max_tokens, max_tokens),
    }


# Shaping -----------------------------------------------------------------------------------
def _finish_reason(result: JobResult) -> FinishReason:
    return "length" if result.result.finish_reason == "length" else "stop"


def _usage(answer: SolveResponse) -> CompletionUsage:
    prompt, completion = answer.usage.prompt_tokens, answer.usage.generated_tokens
    return CompletionUsage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _costs(answer: SolveResponse) -> KavaCosts:
    return KavaCosts(
        request_id=answer.id,
        mode=answer.mode,
        answer=answer.answer,
        latent_tokens=answer.usage.latent_tokens,
        forward_passes=answer.usage.forward_passes,
        kv_cache_bytes=answer.kv_cache_bytes,
        timings_ms=answer.timings_ms,
        latents=answer.latents,
    )


def _event(chunk: BaseModel, *, usage: bool) -> str:
    """One SSE event. `kava` only where set; `usage` on every chunk (null but the last) only
    when the client asked for it, as OpenAI does."""
    exclude = {name for name, off in (("kava", chunk.kava is None), ("usage", not usage)) if off}
    return f"data: {chunk.model_dump_json(exclude=exclude)}\n\n"


def _sse(events: AsyncIterator[str], request: Request) -> StreamingResponse:
    async def body() -> AsyncIterator[str]:
        try:
            async for event in events:
                yield event
        except ApiError as exc:  # after the first byte a status cannot change: an error event instead
            _ctx(request).count_error(request, exc.status, getattr(request.state, "mode", None))
            error = ErrorEnvelope(error=ErrorBody(type=exc.type, message=exc.message, param=exc.param))
            yield f"data: {error.model_dump_json()}\n\n"
            return
        yield "data: [DONE]\n\n"

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(body(), media_type="text/event-stream", headers=headers)


def _ctx(request: Request) -> ServerContext:
    return request.app.state.kava


# /v1/chat/completions ----------------------------------------------------------------------
@router.post("/chat/completions", response_model=ChatCompletion, responses=STREAM)
async def chat_completions(body: ChatCompletionRequest, request: Request):
    created = int(time.time())
    limit = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    with _openai_names(_names(("messages", "the question (last user message)"), limit)):
        solve = body.to_solve()
        for param, message in body.problems(_ctx(request).settings)[:1]:
            raise invalid(param, message)
        if body.stream:
            pieces = await open_answer_stream(solve, request)
        else:
            job, result = await solve_job(solve, request)
    rid = request.state.request_id
    if body.stream:
        usage = body.include_usage()
        return _sse(_chat_events(pieces, solve, f"chatcmpl-{rid}", created, body.model, usage), request)
    answer = solve_response(job, solve, result)
    return ChatCompletion(
        id=f"chatcmpl-{rid}",
        created=created,
        model=body.model,
        choices=[ChatChoice(message=ChatMessageOut(content=answer.text), finish_reason=_finish_reason(result))],
        usage=_usage(answer),
        kava=_costs(answer),
    )


async def _chat_events(
    pieces: AsyncIterator[str | Finished], solve: SolveRequest, id: str, created: int, model: str, usage: bool
) -> AsyncIterator[str]:
    def chunk(choices: list[ChatChunkChoice], **rest) -> str:
        return _event(ChatCompletionChunk(id=id, created=created, model=model, choices=choices, **rest), usage=usage)

    yield chunk([ChatChunkChoice(delta=ChatDelta(role="assistant", content=""))])
    async for item in pieces:
        if isinstance(item, str):
            if item:
                yield chunk([ChatChunkChoice(delta=ChatDelta(content=item))])
            continue
        answer = solve_response(item.job, solve, item.result)
        yield chunk(
            [ChatChunkChoice(delta=ChatDelta(), finish_reason=_finish_reason(item.result))], kava=_costs(answer)
        )
        if usage:
            yield chunk([], usage=_usage(answer))


# /v1/completions ---------------------------------------------------------------------------
@router.post("/completions", response_model=Completion, responses=STREAM)
async def completions(body: CompletionRequest, request: Request):
    created = int(time.time())
    with _openai_names(_names(("prompt", "the question (prompt)"), "max_tokens")):
        solve = body.to_solve()
        if body.stream:
            pieces = await open_answer_stream(solve, request)
        else:
            job, result = await solve_job(solve, request)
    rid = request.state.request_id
    if body.stream:
        usage = body.include_usage()
        return _sse(_completion_events(pieces, solve, f"cmpl-{rid}", created, body.model, usage), request)
    answer = solve_response(job, solve, result)
    return Completion(
        id=f"cmpl-{rid}",
        created=created,
        model=body.model,
        choices=[CompletionChoice(text=answer.text, finish_reason=_finish_reason(result))],
        usage=_usage(answer),
        kava=_costs(answer),
    )


async def _completion_events(
    pieces: AsyncIterator[str | Finished], solve: SolveRequest, id: str, created: int, model: str, usage: bool
) -> AsyncIterator[str]:
    def chunk(choices: list[CompletionChoice], **rest) -> str:
        rest = {"usage": None, "kava": None, **rest}
        return _event(Completion(id=id, created=created, model=model, choices=choices, **rest), usage=usage)

    async for item in pieces:
        if isinstance(item, str):
            if item:
                yield chunk([CompletionChoice(text=item, finish_reason=None)])
            continue
        answer = solve_response(item.job, solve, item.result)
        yield chunk([CompletionChoice(text="", finish_reason=_finish_reason(item.result))], kava=_costs(answer))
        if usage:
            yield chunk([], usage=_usage(answer))


# /v1/models --------------------------------------------------------------------------------
def _model(request: Request, name: str) -> Model:
    """`created` is when this server first listed the adapter (adapters carry no date)."""
    state = request.app.state
    if not hasattr(state, "openai_created"):
        state.openai_created = {}
    created = state.openai_created.setdefault(name, int(time.time()))
    return Model(id=name, created=created)


@router.get("/models", response_model=ModelList)
async def list_models(request: Request) -> ModelList:
    ctx = _ctx(request)
    infos = ctx.engine.adapters()
    if not infos:
        raise unavailable("unavailable_error", "the model is not loaded yet", ctx.settings.retry_after_s)
    return ModelList(data=[_model(request, info.name) for info in infos])


@router.get("/models/{model}", response_model=Model)
async def retrieve_model(model: str, request: Request) -> Model:
    engine = _ctx(request).engine
    if engine.adapter(model) is None:
        loaded = sorted(a.name for a in engine.adapters())
        raise not_found(f"model {model!r} is not loaded; loaded models (adapters): {loaded}", "model")
    return _model(request, model)
