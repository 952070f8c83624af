"""Fixtures for the server tests: one tiny Llama-family KaVa model, saved as adapters,
shared by every test through a ModelRunner; small engines and apps are built per test."""

from __future__ import annotations

import pytest
import torch
from tiny import make_model

from kava.adapters import save_adapter
from server.runner import ModelRunner


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """A 32-wide model gains nothing from a second intra-op thread, and loses a great deal
    when another process keeps the other core busy (threads wait on each other)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model(tiny_bases):
    return make_model(tiny_bases["llama"], seed=1)


@pytest.fixture(scope="session")
def adapter_dir(tiny_model, tmp_path_factory):
    return save_adapter(tiny_model, tmp_path_factory.mktemp("adapters") / "tiny")


@pytest.fixture(scope="session")
def other_adapter_dir(tiny_bases, tmp_path_factory):
    return save_adapter(make_model(tiny_bases["llama"], seed=2), tmp_path_factory.mktemp("adapters") / "other")


@pytest.fixture(scope="session")
def runner(tiny_model):
    return ModelRunner({"tiny": tiny_model})
