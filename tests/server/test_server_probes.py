"""Issue 12's attacks, replayed over real HTTP against uvicorn: each gets its documented 4xx
in the error envelope, and after each one the server still answers a question and /health."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest
from server_harness import QUESTIONS, app_over, live_server

KEY = "probe-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def root(other_adapter_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("probe-root")
    for name, content in {"list": b"[1]", "empty": b"{}", "null": b"null", "string": b'"x"', "bytes": b"\xff"}.items():
        (shutil.copytree(other_adapter_dir, root / name) / "kava_config.json").write_bytes(content)
    weights = Path(shutil.copytree(other_adapter_dir, root / "truncated")) / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    return root


@pytest.fixture(scope="module")
def url(runner, root):
    app = app_over(runner, api_key=KEY, adapter_roots=[root], max_body_bytes=64 * 1024, max_new_tokens_latent=4)
    with live_server(app) as base:
        yield base


def _probes(root: Path, elsewhere: Path) -> list[tuple[str, dict, int, str]]:
    """(what, request, status, a phrase the message holds)."""
    emoji = "\U0001f600" * 2000
    adapter = lambda path: dict(method="POST", url="/v1/adapters", json={"name": "x", "path": path}, headers=AUTH)  # noqa: E731
    solve = lambda **kw: dict(method="POST", url="/v1/solve", headers={**AUTH, **kw.pop("headers", {})}, **kw)  # noqa: E731
    return [
        ("load from outside the roots", adapter(str(elsewhere)), 422, "inside the server's adapter roots"),
        ("load a missing path", adapter(str(root / "nothing")), 422, "inside the server's adapter roots"),
        ("load via ..", adapter("../" + elsewhere.name), 422, "inside the server's adapter roots"),
        *[(f"config {n}", adapter(n), 422, "kava_config.json") for n in ("list", "empty", "null", "string", "bytes")],
        ("truncated LoRA weights", adapter("truncated"), 422, "adapter_model.safetensors is unreadable"),
        ("2000 emoji", solve(json={"question": emoji}), 422, "question 8000 + <bot> 1 + latents 3"),
        ("2001 emoji", solve(json={"question": emoji + "!"}), 422, "2001 characters"),
        ("emoji within chars, over tokens", solve(json={"question": emoji[:500]}), 422, "positions"),
        ("a body over the limit", solve(content=b"{" + b" " * 200_000 + b"}", headers=JSON), 413, "limit is 65536"),
        ("malformed JSON, no key", dict(method="POST", url="/v1/solve", content=b"{", headers=JSON), 401, "API key"),
        ("text/plain", solve(content=b"1+1?", headers={"content-type": "text/plain"}), 415, "application/json"),
        ("return_latents: 0", solve(json={"question": "1+1", "return_latents": 0}), 422, "valid boolean"),
        ("num_iterations: true", solve(json={"question": "1+1", "num_iterations": True}), 422, "valid integer"),
        ("num_iterations: 33", solve(json={"question": "1+1", "num_iterations": 33}), 422, "limit of 32"),
    ]


def test_every_probe_gets_its_4xx_and_the_server_keeps_serving(url, root, adapter_dir):
    with httpx.Client(base_url=url, timeout=60) as client:
        for what, request, status, phrase in _probes(root, adapter_dir):
            r = client.request(**request)
            assert r.status_code == status, (what, r.status_code, r.text[:300])
            error = r.json()["error"]
            assert phrase in error["message"], (what, error["message"])
            assert r.headers["x-request-id"]
            ok = client.post("/v1/solve", json={"question": QUESTIONS[0]}, headers=AUTH)
            assert ok.status_code == 200, (what, ok.text[:300])
        assert client.get("/health").status_code == 200
        assert [a["name"] for a in client.get("/v1/adapters", headers=AUTH).json()["adapters"]] == ["tiny"]
