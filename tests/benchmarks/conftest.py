"""Fixtures for the benchmark tests: the server tests' tiny model, adapter and harness."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from tiny import make_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))  # server_harness

from kava.adapters import save_adapter
from server.runner import ModelRunner


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def bench_model(tiny_bases):
    return make_model(tiny_bases["llama"], seed=3)


@pytest.fixture(scope="session")
def bench_adapter(bench_model, tmp_path_factory):
    return save_adapter(bench_model, tmp_path_factory.mktemp("bench") / "tiny")


@pytest.fixture(scope="session")
def bench_runner(bench_model):
    return ModelRunner({"tiny": bench_model})
