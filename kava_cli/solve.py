"""`kava solve "question"`: ask a running server one question through the SDK.

Owns the command's arguments, its output and its exit codes: 0 answered, 1 the API call
failed (error type, message and request id on stderr), 2 usage error. The answer goes to
stdout alone, so `x=$(kava solve "...")` captures just the number; the usage line goes to
stderr. Imports only `kava_client` (httpx + pydantic), never torch.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import Any, get_args

from kava_client import (
    DEFAULT_BASE_URL,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
    APIConnectionError,
    APIStatusError,
    Client,
    KavaError,
    Mode,
    SolveResponse,
)

ClientFactory = Callable[..., Client]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be an integer >= 1")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be an integer >= 0")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a number of seconds > 0")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("question", help="the math question, quoted")
    parser.add_argument("--url", default=None, help=f"server base URL (default: $KAVA_BASE_URL or {DEFAULT_BASE_URL})")
    parser.add_argument("--api-key", default=None, help="API key sent as a bearer token (default: $KAVA_API_KEY)")
    parser.add_argument("--adapter", default=None, help="adapter name (default: the server's default adapter)")
    parser.add_argument("--mode", choices=get_args(Mode), default="latent", help="latent reasoning or written CoT")
    parser.add_argument("--max-new-tokens", type=_positive_int, default=None, help="cap on generated tokens")
    parser.add_argument("--num-iterations", type=_non_negative_int, default=None, help="override T (Jacobi passes)")
    parser.add_argument("--json", dest="as_json", action="store_true", help="print the full response as JSON")
    parser.add_argument(
        "--timeout", type=_positive_float, default=None, help=f"seconds per attempt (default: {DEFAULT_TIMEOUT.read:g})"
    )
    parser.add_argument(
        "--max-retries",
        type=_non_negative_int,
        default=DEFAULT_MAX_RETRIES,
        help=f"retries on connection errors, 429 and 5xx (default: {DEFAULT_MAX_RETRIES})",
    )


def run(args: argparse.Namespace, *, client_factory: ClientFactory | None = None) -> int:
    """Solve `args.question`; `client_factory` (default `Client`) lets tests inject a transport."""
    if not args.question.strip():
        print("kava solve: error: the question is empty", file=sys.stderr)
        return 2
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP call is noise here
    options: dict[str, Any] = {"base_url": args.url, "api_key": args.api_key, "max_retries": args.max_retries}
    if args.timeout is not None:
        options["timeout"] = args.timeout
    factory = client_factory or Client
    try:
        with factory(**options) as client:
            response = client.solve(
                args.question,
                adapter=args.adapter,
                mode=args.mode,
                max_new_tokens=args.max_new_tokens,
                num_iterations=args.num_iterations,
            )
    except ValueError as e:  # a malformed --url or KAVA_BASE_URL, found before any request
        print(f"kava solve: error: {e}", file=sys.stderr)
        return 2
    except KavaError as e:
        print(describe_error(e), file=sys.stderr)
        return 1
    if args.as_json:
        print(response.model_dump_json(indent=2))
    else:
        print(response.answer if response.answer is not None else response.text)
        print(usage_line(response), file=sys.stderr)
    return 0


def usage_line(response: SolveResponse) -> str:
    u, t = response.usage, response.timings_ms
    adapter = f" adapter={response.adapter}" if response.adapter else ""
    return (
        f"[{response.mode}{adapter}] {u.prompt_tokens} prompt + {u.latent_tokens} latent + "
        f"{u.generated_tokens} generated tokens, {u.forward_passes} forward passes, "
        f"{t.total:.0f} ms (queue {t.queue:.0f}) id={response.id}"
    )


def describe_error(error: KavaError) -> str:
    """One line for stderr: what failed, the server's error type and message, the request id."""
    if isinstance(error, APIStatusError):
        kind = error.error_type or type(error).__name__
        head = f"kava solve: {kind} (HTTP {error.status}): {error.message}"
        if error.param:
            head += f" [param: {error.param}]"
    elif isinstance(error, APIConnectionError):
        head = f"kava solve: {type(error).__name__}: {error.message}"
    else:
        head = f"kava solve: {type(error).__name__}: {getattr(error, 'message', error)}"
    rid = error.request_id
    return f"{head} [request_id={rid}]" if rid else head
