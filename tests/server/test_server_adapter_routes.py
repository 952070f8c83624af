"""Run-time adapters: load one beside the default (sharing its base), solve with it, unload
it, and the errors around that: loading off without a root (403), one 422 for any path that
is not an adapter inside a root (missing, outside, symlink out, `..`: the same words), a 422
naming each malformed file, a taken name (409), the base's owner, the keys (the admin key
when one is set). After every bad probe the server keeps serving."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from server_harness import QUESTIONS, app_over, client_for, run

from kava.adapters import load_adapter
from kava.generate import solve_batch

ADMIN = {"Authorization": "Bearer admin-key"}
USER = {"Authorization": "Bearer user-key"}


@pytest.fixture(scope="module")
def root(other_adapter_dir, tmp_path_factory) -> Path:
    """An adapter root holding `other` and a set of malformed copies of it."""
    root = tmp_path_factory.mktemp("root")
    shutil.copytree(other_adapter_dir, root / "other")
    for name, content in {
        "list": b"[1]",
        "empty": b"{}",
        "null": b"null",
        "string": b'"x"',
        "bytes": b"\xff\x00",
    }.items():
        (shutil.copytree(other_adapter_dir, root / f"bad-{name}") / "kava_config.json").write_bytes(content)
    truncated = Path(shutil.copytree(other_adapter_dir, root / "bad-truncated")) / "adapter_model.safetensors"
    truncated.write_bytes(truncated.read_bytes()[:-64])
    (root / "not-an-adapter").mkdir()
    (root / "a-file").write_text("x")
    return root


def test_load_solve_unload(runner, tiny_model, root):
    q = QUESTIONS[3]
    want_other = solve_batch(load_adapter(root / "other"), [q], max_new_tokens=6).results[0].text
    want_tiny = solve_batch(tiny_model, [q], max_new_tokens=6).results[0].text

    async def scenario():
        async with client_for(app_over(runner, adapter_roots=[root])) as client:
            loaded = await client.post("/v1/adapters", json={"name": "other", "path": "other"})
            listed = (await client.get("/v1/adapters")).json()
            with_other = await client.post("/v1/solve", json={"question": q, "adapter": "other"})
            with_default = await client.post("/v1/solve", json={"question": q})
            again = await client.post("/v1/adapters", json={"name": "other", "path": str(root / "other")})
            owner = await client.delete("/v1/adapters/tiny")
            unloaded = await client.delete("/v1/adapters/other")
            after = await client.post("/v1/solve", json={"question": q, "adapter": "other"})
            twice = await client.delete("/v1/adapters/other")
            bad_name = await client.delete("/v1/adapters/..%2F..")
            names = [a["name"] for a in (await client.get("/v1/adapters")).json()["adapters"]]
        return loaded, listed, with_other, with_default, again, owner, unloaded, after, twice, bad_name, names

    loaded, listed, with_other, with_default, again, owner, unloaded, after, twice, bad_name, names = run(scenario())
    assert loaded.status_code == 201 and loaded.json()["name"] == "other" and not loaded.json()["default"]
    assert [a["name"] for a in listed["adapters"]] == ["tiny", "other"]
    assert with_other.status_code == 200 and with_other.json()["adapter"] == "other"
    assert with_other.json()["text"] == want_other
    assert with_default.json()["text"] == want_tiny
    assert again.status_code == 409 and again.json()["error"]["param"] == "name"
    assert owner.status_code == 409 and "owns the base" in owner.json()["error"]["message"]
    assert unloaded.status_code == 200 and unloaded.json() == {"name": "other", "deleted": True}
    assert after.status_code == 404 and after.json()["error"]["param"] == "adapter"
    assert twice.status_code == 404
    assert bad_name.status_code in (404, 422)
    assert names == ["tiny"]


def test_runtime_loading_is_off_without_a_root(runner, root):
    async def scenario():
        async with client_for(app_over(runner)) as client:
            load = await client.post("/v1/adapters", json={"name": "other", "path": str(root / "other")})
            delete = await client.delete("/v1/adapters/tiny")
            solve = await client.post("/v1/solve", json={"question": QUESTIONS[0]})
        return load, delete, solve

    load, delete, solve = run(scenario())
    for r in (load, delete):
        assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
        assert "--adapter-root" in r.json()["error"]["message"]
    assert solve.status_code == 200


def test_one_answer_for_every_path_that_is_not_an_adapter_here(runner, root, adapter_dir, tmp_path):
    outside = Path(shutil.copytree(adapter_dir, tmp_path / "outside"))  # a valid adapter, outside the root
    link = root / "link-out"
    if not link.exists():
        link.symlink_to(outside, target_is_directory=True)
    probes = [
        str(outside),  # exists, valid, outside
        str(tmp_path / "missing"),  # missing, outside
        "missing",  # missing, inside
        "link-out",  # a symlink inside that leads out
        "other/../../" + outside.name,  # `..` out of the root
        str(root / ".." / outside.parent.name / "outside"),
        "a-file",  # not a directory
        "/etc",
        "/",
        "other\x00",
    ]

    async def scenario():
        async with client_for(app_over(runner, adapter_roots=[root])) as client:
            out = []
            for path in probes:
                out.append(await client.post("/v1/adapters", json={"name": "x", "path": path}))
                out.append(await client.post("/v1/solve", json={"question": QUESTIONS[0]}))
            return out

    replies = run(scenario())
    for path, r, solve in zip(probes, replies[::2], replies[1::2]):
        assert r.status_code == 422, (path, r.text)
        err = r.json()["error"]
        assert err["param"] == "path"
        assert err["message"] == f"path {path!r} is not an adapter directory inside the server's adapter roots"
        assert str(root) not in err["message"].replace(path, "")
        assert solve.status_code == 200  # the server keeps serving


@pytest.mark.parametrize(
    ("folder", "needle"),
    [
        ("bad-list", "kava_config.json must hold a JSON object, got a list"),
        ("bad-empty", "kava_config.json lacks field 'base_model'"),
        ("bad-null", "kava_config.json must hold a JSON object, got null"),
        ("bad-string", "kava_config.json must hold a JSON object, got a string"),
        ("bad-bytes", "kava_config.json is not UTF-8 text"),
        ("bad-truncated", "adapter_model.safetensors is unreadable (truncated"),
        ("not-an-adapter", "kava_config.json is missing"),
    ],
)
def test_a_malformed_adapter_is_a_422_naming_the_file(runner, root, folder, needle):
    async def scenario():
        async with client_for(app_over(runner, adapter_roots=[root])) as client:
            r = await client.post("/v1/adapters", json={"name": "bad", "path": folder})
            listed = (await client.get("/v1/adapters")).json()
            solve = await client.post("/v1/solve", json={"question": QUESTIONS[0]})
        return r, listed, solve

    r, listed, solve = run(scenario())
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["param"] == "path" and needle in err["message"], err["message"]
    assert str(root) not in err["message"]
    assert [a["name"] for a in listed["adapters"]] == ["tiny"]
    assert solve.status_code == 200


def test_adapter_routes_need_the_key(runner, root):
    async def scenario():
        async with client_for(app_over(runner, api_key="user-key", adapter_roots=[root])) as client:
            load = await client.post("/v1/adapters", json={"name": "other", "path": "other"})
            delete = await client.delete("/v1/adapters/tiny")
        return load, delete

    load, delete = run(scenario())
    assert load.status_code == delete.status_code == 401


def test_the_admin_key_guards_loading_and_unloading(runner, root):
    async def scenario():
        app = app_over(runner, api_key="user-key", admin_api_key="admin-key", adapter_roots=[root])
        async with client_for(app) as client:
            body = {"name": "other", "path": "other"}
            user_load = await client.post("/v1/adapters", json=body, headers=USER)
            admin_load = await client.post("/v1/adapters", json=body, headers={"X-API-Key": "admin-key"})
            user_list = await client.get("/v1/adapters", headers=USER)
            user_solve = await client.post(
                "/v1/solve", json={"question": QUESTIONS[0], "adapter": "other"}, headers=USER
            )
            admin_solve = await client.post("/v1/solve", json={"question": QUESTIONS[0]}, headers=ADMIN)
            user_delete = await client.delete("/v1/adapters/other", headers=USER)
            admin_delete = await client.delete("/v1/adapters/other", headers=ADMIN)
        return user_load, admin_load, user_list, user_solve, admin_solve, user_delete, admin_delete

    user_load, admin_load, user_list, user_solve, admin_solve, user_delete, admin_delete = run(scenario())
    assert user_load.status_code == 401 and user_delete.status_code == 401
    assert admin_load.status_code == 201 and admin_delete.status_code == 200
    assert user_list.status_code == 200 and user_solve.status_code == 200
    assert admin_solve.status_code == 401  # the admin key is for administration only


def test_an_admin_key_alone_leaves_solving_open(runner, root):
    async def scenario():
        async with client_for(app_over(runner, admin_api_key="admin-key", adapter_roots=[root])) as client:
            solve = await client.post("/v1/solve", json={"question": QUESTIONS[0]})
            load = await client.post("/v1/adapters", json={"name": "other", "path": "other"})
        return solve, load

    solve, load = run(scenario())
    assert solve.status_code == 200 and load.status_code == 401
