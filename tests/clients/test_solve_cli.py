"""`kava solve`: output, options, exit codes (0 ok, 1 API error, 2 usage), and no torch import."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import httpx
import pytest
from kava_client import Client

from kava_cli import main as kava_main
from kava_cli import solve

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_cli(argv: list[str], fake) -> int:
    parser = argparse.ArgumentParser(prog="kava solve")
    solve.add_arguments(parser)
    args = parser.parse_args(argv)
    return solve.run(args, client_factory=lambda **kw: Client(transport=httpx.MockTransport(fake), **kw))


def test_prints_the_answer_on_stdout_and_usage_on_stderr(server, solve_ok, capsys):
    assert run_cli(["What is 6 * 7?"], server(solve_ok())) == 0
    out, err = capsys.readouterr()
    assert out == "42\n"
    assert "30 prompt + 24 latent + 4 generated tokens, 9 forward passes" in err and "id=req-1" in err


def test_prints_the_text_when_there_is_no_answer(server, solve_ok, capsys):
    assert run_cli(["q"], server(solve_ok(answer=None, text="I am not sure"))) == 0
    assert capsys.readouterr().out == "I am not sure\n"


def test_json_prints_the_full_response(server, solve_ok, capsys):
    assert run_cli(["q", "--json"], server(solve_ok(latents=[["7"]]))) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["answer"] == "42" and printed["latents"] == [["7"]]
    assert printed["usage"]["forward_passes"] == 9 and printed["timings_ms"]["total"] == 10.0


def test_options_reach_the_request(server, solve_ok, capsys):
    fake = server(solve_ok())
    argv = ["q", "--url", "http://gpu:9000", "--api-key", "sk-1", "--adapter", "gsm8k", "--mode", "cot"]
    argv += ["--max-new-tokens", "64", "--num-iterations", "2", "--timeout", "3"]
    assert run_cli(argv, fake) == 0
    request = fake.requests[0]
    assert str(request.url) == "http://gpu:9000/v1/solve"
    assert request.headers["authorization"] == "Bearer sk-1"
    assert request.extensions["timeout"]["read"] == 3.0
    assert json.loads(request.content) == {
        "question": "q",
        "mode": "cot",
        "adapter": "gsm8k",
        "max_new_tokens": 64,
        "num_iterations": 2,
    }


def test_api_error_exits_1_with_type_message_and_request_id(server, error, capsys):
    fake = server(error(404, "adapter_not_found", "adapter 'nope' is not loaded", param="adapter", X_Request_Id="r-5"))
    assert run_cli(["q", "--adapter", "nope"], fake) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.strip() == (
        "kava solve: adapter_not_found (HTTP 404): adapter 'nope' is not loaded [param: adapter] [request_id=r-5]"
    )


def test_exhausted_retries_exit_1(server, error, capsys, sleeps):
    assert run_cli(["q", "--max-retries", "1"], server(error(503, "overloaded", "queue full", Retry_After="2"))) == 1
    assert sleeps == [2.0]
    assert "overloaded (HTTP 503): queue full" in capsys.readouterr().err


def test_connection_error_exits_1(server, capsys):
    assert run_cli(["q", "--max-retries", "0"], server(httpx.ConnectError)) == 1
    err = capsys.readouterr().err
    assert err.startswith("kava solve: APIConnectionError: POST http://127.0.0.1:8000/v1/solve failed")
    assert "[request_id=" in err


def test_empty_question_exits_2(server, solve_ok, capsys):
    fake = server(solve_ok())
    assert run_cli(["   "], fake) == 2
    assert fake.requests == [] and "question is empty" in capsys.readouterr().err


def test_malformed_url_exits_2(server, solve_ok, capsys):
    assert run_cli(["q", "--url", "gpu:8000"], server(solve_ok())) == 2
    assert "must start with http://" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [["solve"], ["solve", "q", "--mode", "telepathy"], ["solve", "q", "--max-new-tokens", "0"], ["solve", "q", "-x"]],
)
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        kava_main.main(argv)
    assert info.value.code == 2


def test_the_kava_dispatcher_runs_solve(server, solve_ok, monkeypatch, capsys):
    fake = server(solve_ok())
    monkeypatch.setattr(solve, "Client", lambda **kw: Client(transport=httpx.MockTransport(fake), **kw))
    assert kava_main.main(["solve", "What is 6 * 7?", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == "req-1"


def test_kava_solve_does_not_import_torch():
    code = "import sys, kava_cli.main, kava_cli.solve; sys.exit('torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "clients")])}
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=60).returncode == 0
