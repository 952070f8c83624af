"""What one forward pass costs: `kava bench passes` (reports, never asserts).

Times `kava.fastlm.forward` — the pass every engine phase runs — for a few pass shapes at
each batch size: a one-token decode step, a Jacobi pass of M slots, and a prefill of a
typical prompt plus M fused init slots; each on a cache already holding a prompt. With
`compile=True` the same passes run through `torch.compile` too, with its compile time
reported apart. This is the per-pass figure behind the engine bench's latent-vs-CoT
ratio: on a compute-bound CPU an M-slot pass costs more than a decode pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from kava.backbone import KavaModel
from kava.fastlm import KVCache, Plan, fast_lm, forward


def pass_shapes(num_latents: int, prompt: int) -> dict[str, tuple[int, int]]:
    """Named passes as (tokens per row, tokens already in the row's cache)."""
    return {
        "decode (1 token)": (1, prompt + num_latents),
        f"Jacobi pass ({num_latents} slots)": (num_latents, prompt),
        f"prefill ({prompt} + {num_latents} init slots)": (prompt + num_latents, 0),
    }


def sync(device: torch.device) -> None:
    """Wait for queued device work, so a host timer measures it (a no-op off CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable, lm, cache: KVCache, x: torch.Tensor, plan: Plan, reps: int, device) -> float:
    """Median milliseconds of `reps` calls after warm-up."""
    times = []
    with torch.no_grad():
        for _ in range(3):
            fn(lm, cache, x, plan)
        for _ in range(reps):
            sync(device)
            t0 = time.perf_counter()
            fn(lm, cache, x, plan)
            sync(device)
            times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def bench_passes(
    model: KavaModel,
    *,
    batch_sizes: Sequence[int] = (1, 32),
    num_latents: int = 12,
    prompt: int = 46,
    reps: int = 50,
    compile: bool = False,
) -> dict:
    """{"rows": [{pass, batch, tokens, eager_ms[, compiled_ms]}], ...} for every shape and batch size."""
    lm = fast_lm(model)
    device = lm.device
    shapes = pass_shapes(num_latents, prompt)
    compiled = torch.compile(forward, dynamic=True) if compile else None
    rows, compile_s = [], 0.0
    for b in batch_sizes:
        cache = KVCache(lm, b, prompt + num_latents + 8)
        for name, (n, start) in shapes.items():
            x = torch.randn(b * n, model.hidden_size, dtype=lm.dtype, device=device)
            plan = Plan.build([start] * b, [n] * b, device)
            eager = _time(forward, lm, cache, x, plan, reps, device)
            row = {"pass": name, "batch": b, "tokens": b * n, "eager_ms": eager}
            if compiled is not None:
                t0 = time.perf_counter()
                with torch.no_grad():
                    compiled(lm, cache, x, plan)  # a new shape may recompile: kept out of the timing
                compile_s += time.perf_counter() - t0
                row["compiled_ms"] = _time(compiled, lm, cache, x, plan, reps, device)
            rows.append(row)
    return {
        "rows": rows,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "dtype": str(lm.dtype),
        **({"compile_seconds": round(compile_s, 1)} if compile else {}),
    }


def passes_table(report: dict) -> str:
    compiled = any("compiled_ms" in r for r in report["rows"])
    head = "| pass | batch | tokens | eager ms |" + (" compiled ms |" if compiled else "")
    lines = [head, "|---|---|---|---|" + ("---|" if compiled else "")]
    for r in report["rows"]:
        cell = f" {r['compiled_ms']:.3f} |" if compiled else ""
        lines.append(f"| {r['pass']} | {r['batch']} | {r['tokens']} | {r['eager_ms']:.3f} |{cell}")
    return "\n".join(lines) + "\n"
