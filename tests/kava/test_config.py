"""MethodConfig / LoraSettings validate on construction and round-trip through JSON."""

from __future__ import annotations

import json

import pytest

from kava.config import ConfigError, LoraSettings, MethodConfig


def test_defaults_follow_the_paper():
    c = MethodConfig()
    assert (c.num_latents, c.num_iterations, c.eviction_lambda) == (24, 3, 0.1)
    assert (c.codi_weight, c.kv_weight, c.drop_last_step) == (10.0, 1.0, True)
    lora = LoraSettings()
    assert (lora.r, lora.alpha, lora.dropout) == (128, 32, 0.1)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        MethodConfig(num_latents=0, eviction="lru", eviction_lambda=1.5, kv_loss="huber", objective="x")
    msg = str(err.value)
    for field in ("num_latents=0", "eviction='lru'", "eviction_lambda=1.5", "kv_loss='huber'", "objective='x'"):
        assert field in msg


@pytest.mark.parametrize(
    "bad",
    [{"num_iterations": -1}, {"answer_prompt": " "}, {"codi_weight": -1}, {"kv_key_space": "rope"}, {"codi_loss": "x"}],
)
def test_bad_values_raise(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        MethodConfig(**bad)


def test_json_round_trip_and_unknown_fields():
    c = MethodConfig(num_latents=6, objective="pccot", eviction="crop")
    assert MethodConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    with pytest.raises(ConfigError, match="unknown MethodConfig field"):
        MethodConfig.from_dict({"num_latent": 3})
    lora = LoraSettings(r=8, target_modules=["q_proj", "v_proj"])
    assert LoraSettings.from_dict(json.loads(json.dumps(lora.to_dict()))) == lora


def test_objective_implies_the_terms():
    assert MethodConfig(objective="kava").uses_kv_loss
    assert not MethodConfig(objective="pccot").uses_kv_loss and MethodConfig(objective="pccot").uses_codi_loss
    assert MethodConfig(objective="codi").sequential
    assert not MethodConfig(objective="cot").uses_latents
    assert not MethodConfig(objective="nocot").uses_trace


def test_frozen():
    with pytest.raises(AttributeError):
        MethodConfig().num_latents = 3  # type: ignore[misc]
