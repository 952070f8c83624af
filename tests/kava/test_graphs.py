"""Fixed-shape passes (`kava.graphs`): the padded, full-cache-width pass gives the packed
pass's tokens, for every family and mode, as rows leave and the bucket shrinks, after the
cache grows, and — on a CUDA device — captured and replayed as CUDA graphs."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from tiny import EXAMPLES, make_model

from kava.generate import solve_batch
from kava.graphs import BUCKETS, bucket

QUESTIONS = [e.question for e in EXAMPLES]
LIMITS = [7, 3, 8, 5]  # rows leave at different passes: 4 rows (bucket 4), then 3 (padded), ...
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _texts(out):
    return [(r.text, r.finish_reason, r.generated_tokens, r.forward_passes) for r in out.results]


def test_bucket_is_the_smallest_that_holds_the_rows():
    assert [bucket(n) for n in (1, 2, 3, 5, 8, 9, 256)] == [1, 2, 4, 8, 8, 16, 256]
    assert bucket(BUCKETS[-1] + 1) is None


def _check(model):
    m = model.config.num_latents
    for mode in ("latent", "cot"):
        packed = solve_batch(model, QUESTIONS, mode=mode, max_new_tokens=LIMITS)
        fixed = solve_batch(model, QUESTIONS, mode=mode, max_new_tokens=LIMITS, graphs=True)
        assert _texts(fixed) == _texts(packed)
    running = model.graphed_running
    shapes = set(running.graphs.passes)
    assert {(4, 1), (2, 1), (1, 1)} <= shapes  # decode as rows leave: 4 rows, 3 padded to 4, 2, 1
    assert any(w >= m for _, w in shapes)  # the Jacobi passes
    assert max(w for _, w in shapes) <= m + len(running.suffix)  # prefills stay packed


def test_fixed_shape_passes_give_the_packed_tokens(tiny_bases, family):
    _check(make_model(tiny_bases[family]))


def test_a_grown_cache_drops_its_captures_and_answers_the_same(tiny_bases):
    model = make_model(tiny_bases["llama"])
    small = solve_batch(model, QUESTIONS[:2], max_new_tokens=4, graphs=True)
    running = model.graphed_running
    before = running.cache.version
    many = QUESTIONS * 3  # 12 rows: the cache grows past its 2 slots, bucket 16
    fixed = solve_batch(model, many, max_new_tokens=6, graphs=True)
    assert model.graphed_running is running and running.cache.version > before
    assert running.cache.rows >= 16 and all(b <= running.cache.rows for b, _ in running.graphs.passes)
    assert _texts(fixed) == _texts(solve_batch(model, many, max_new_tokens=6))
    assert _texts(small) == _texts(solve_batch(model, QUESTIONS[:2], max_new_tokens=4))


def test_a_failed_solve_leaves_no_rows_behind(tiny_bases):
    model = make_model(tiny_bases["llama"])

    def boom(i):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        solve_batch(model, QUESTIONS, max_new_tokens=4, graphs=True, is_cancelled=boom)
    assert model.graphed_running is None
    out = solve_batch(model, QUESTIONS, max_new_tokens=4, graphs=True)
    assert _texts(out) == _texts(solve_batch(model, QUESTIONS, max_new_tokens=4))


def test_a_model_with_a_kept_running_batch_is_still_freed(tiny_bases):
    model = make_model(tiny_bases["llama"])
    solve_batch(model, QUESTIONS, max_new_tokens=2, graphs=True)
    assert model.graphed_running is not None
    gone = weakref.ref(model)
    del model
    gc.collect()
    assert gone() is None


@pytest.mark.gpu
@CUDA
def test_cuda_graphs_give_the_packed_tokens(tiny_bases, family):
    model = make_model(tiny_bases[family]).to("cuda")
    _check(model)
    assert all(hasattr(p, "graph") for p in model.graphed_running.graphs.passes.values())  # captured


@pytest.mark.gpu
@CUDA
def test_cuda_graphs_in_bf16_replay_what_they_captured(tiny_bases):
    """A second call replays the first call's graphs with new inputs: same tokens as eager."""
    model = make_model(tiny_bases["llama"]).to(device="cuda", dtype=torch.bfloat16)
    first = solve_batch(model, QUESTIONS, max_new_tokens=LIMITS, graphs=True)
    shapes = dict(model.graphed_running.graphs.passes)
    again = solve_batch(model, QUESTIONS[::-1], max_new_tokens=LIMITS[::-1], graphs=True)
    assert all(model.graphed_running.graphs.passes[k] is p for k, p in shapes.items())  # reused, not recaptured
    assert _texts(first) == _texts(solve_batch(model, QUESTIONS, max_new_tokens=LIMITS))
    assert _texts(again) == _texts(solve_batch(model, QUESTIONS[::-1], max_new_tokens=LIMITS[::-1]))
