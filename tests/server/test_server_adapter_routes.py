"""Run-time adapters: load one beside the default (sharing its base), solve with it, unload
it, and the errors around that (unknown, taken name, the base's owner, bad path, key)."""

from __future__ import annotations

from server_harness import QUESTIONS, app_over, client_for, run

from kava.adapters import load_adapter
from kava.generate import solve_batch


def test_load_solve_unload(runner, tiny_model, other_adapter_dir, tmp_path):
    q = QUESTIONS[3]
    want_other = solve_batch(load_adapter(other_adapter_dir), [q], max_new_tokens=6).results[0].text
    want_tiny = solve_batch(tiny_model, [q], max_new_tokens=6).results[0].text

    async def scenario():
        async with client_for(app_over(runner)) as client:
            loaded = await client.post("/v1/adapters", json={"name": "other", "path": str(other_adapter_dir)})
            models = (await client.get("/v1/adapters")).json()
            with_other = await client.post("/v1/solve", json={"question": q, "adapter": "other"})
            with_default = await client.post("/v1/solve", json={"question": q})
            again = await client.post("/v1/adapters", json={"name": "other", "path": str(other_adapter_dir)})
            bad_path = await client.post("/v1/adapters", json={"name": "ghost", "path": str(tmp_path / "none")})
            owner = await client.delete("/v1/adapters/tiny")
            unloaded = await client.delete("/v1/adapters/other")
            after = await client.post("/v1/solve", json={"question": q, "adapter": "other"})
            twice = await client.delete("/v1/adapters/other")
            names = [a["name"] for a in (await client.get("/v1/adapters")).json()["adapters"]]
        return loaded, models, with_other, with_default, again, bad_path, owner, unloaded, after, twice, names

    loaded, models, with_other, with_default, again, bad_path, owner, unloaded, after, twice, names = run(scenario())
    assert loaded.status_code == 201 and loaded.json()["name"] == "other" and not loaded.json()["default"]
    assert [a["name"] for a in models["adapters"]] == ["tiny", "other"]
    assert with_other.status_code == 200 and with_other.json()["adapter"] == "other"
    assert with_other.json()["text"] == want_other
    assert with_default.json()["text"] == want_tiny
    assert again.status_code == 409 and again.json()["error"]["param"] == "name"
    assert bad_path.status_code == 422 and "is not a directory" in bad_path.json()["error"]["message"]
    assert owner.status_code == 409 and "owns the base" in owner.json()["error"]["message"]
    assert unloaded.status_code == 200 and unloaded.json() == {"name": "other", "deleted": True}
    assert after.status_code == 404 and after.json()["error"]["param"] == "adapter"
    assert twice.status_code == 404
    assert names == ["tiny"]


def test_adapter_routes_need_the_key(runner, other_adapter_dir):
    async def scenario():
        async with client_for(app_over(runner, api_key="k")) as client:
            load = await client.post("/v1/adapters", json={"name": "other", "path": str(other_adapter_dir)})
            delete = await client.delete("/v1/adapters/tiny")
        return load, delete

    load, delete = run(scenario())
    assert load.status_code == delete.status_code == 401
