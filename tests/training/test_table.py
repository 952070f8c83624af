"""The miniature table's rendering: seeds are averaged, uneven seed counts are shown."""

from __future__ import annotations

from training.table import render


def _cell(name, style, seed, acc, mode="latent"):
    r = {"name": name, "style": style, "seed": seed, "steps": 800, "eval_mode": mode}
    r[mode] = {"accuracy": acc, "forward_passes_per_question": 7.0, "generated_tokens_per_question": 3.0}
    r[mode]["seconds_per_question"] = 0.01
    if name == "kava":
        r["cot"] = {**r[mode], "forward_passes_per_question": 35.0}
    return r


def test_mean_and_std_over_seeds_and_only_styles_that_ran():
    table = render([_cell("kava", "equation", s, a) for s, a in enumerate([0.10, 0.12, 0.14])])
    assert "| KaVa (R-KV eviction) | 12.0 ± 2.0 |" in table
    assert "natural language" not in table and "3 seed(s) per cell" in table
    assert "| PCCoT (Jacobi, no KV loss) | – |" in table
    assert "| cot | equation | 35.0 |" in table


def test_uneven_seed_counts_are_named_per_cell():
    rows = [_cell("kava", "equation", 0, 0.1), _cell("kava", "equation", 1, 0.2), _cell("pccot", "equation", 0, 0.05)]
    table = render(rows)
    assert "| KaVa (R-KV eviction) | 15.0 ± 7.1 (2 seeds) |" in table
    assert "| PCCoT (Jacobi, no KV loss) | 5.0 (1 seed) |" in table
    assert "seeds per cell in brackets" in table


def test_latents_used_row_compares_with_no_jacobi_pass_and_skips_cells_without_it():
    rows = [_cell("kava", "equation", s, a) for s, a in enumerate([0.20, 0.30])]
    for r, t0 in zip(rows, [0.10, 0.12]):
        r["latent_t0"] = {"accuracy": t0}
    table = render([*rows, _cell("pccot", "equation", 0, 0.05)])
    assert "| KaVa (R-KV eviction) | equation | 25.0 | 11.0 |" in table
    assert "| PCCoT (Jacobi, no KV loss) | equation |" not in table  # no T = 0 result recorded
