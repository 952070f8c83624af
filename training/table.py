"""The paper's Table 1 in miniature, on the built-in backbone: `python -m training.table`.

For each trace style (equation-only, natural language) it trains no-CoT, CoT teacher,
CODI-style sequential latents, PCCoT (no KV loss), KaVa and KaVa with crop eviction on
the same budget (the tiny recipe), evaluates each on the held-out split, and writes
`table.json` + `table.md` from every finished cell of that budget in `--work` (so a later
`--seeds 3` or `--methods` run adds to the table). Runs go `--jobs` at a time (one thread
each); each run resumes from its checkpoint and a finished run is never redone.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RECIPE = Path(__file__).resolve().parent / "recipes" / "tiny-cpu.yaml"
METHODS: dict[str, tuple[str, list[str], str]] = {
    # name: (label, overrides, eval mode)
    "nocot": ("no-CoT", ["method.objective=nocot"], "cot"),
    "cot": ("CoT teacher", ["method.objective=cot", "method.drop_last_step=false"], "cot"),
    "codi": ("CODI-style (sequential latents)", ["method.objective=codi"], "latent"),
    "pccot": ("PCCoT (Jacobi, no KV loss)", ["method.objective=pccot"], "latent"),
    "kava": ("KaVa (R-KV eviction)", ["method.objective=kava"], "latent"),
    "kava-kv10": ("KaVa, α2 = 10 (kv_weight)", ["method.objective=kava", "method.kv_weight=10"], "latent"),
    "kava-kv30": ("KaVa, α2 = 30 (kv_weight)", ["method.objective=kava", "method.kv_weight=30"], "latent"),
    "kava-kv100": ("KaVa, α2 = 100 (kv_weight)", ["method.objective=kava", "method.kv_weight=100"], "latent"),
    "kava-step": ("KaVa + step supervision (α3 = 1)", ["method.objective=kava", "method.step_weight=1"], "latent"),
    "kava-crop": ("KaVa (crop eviction)", ["method.objective=kava", "method.eviction=crop"], "latent"),
    "kava-prerope": ("KaVa (R-KV, pre-RoPE keys)", ["method.objective=kava", "method.kv_key_space=pre_rope"], "latent"),
    "kava-curriculum": (
        "KaVa + curriculum (3 stages of 150 steps)",
        ["method.objective=kava", "curriculum.stages=3", "curriculum.steps_per_stage=150"],
        "latent",
    ),
}
STYLES = {"equation": "equation-only (AUG)", "nl": "natural language (AUG-NL)"}


def run_one(name: str, style: str, seed: int, work: Path, steps: int, n_eval: int) -> dict[str, Any]:
    """Train (resuming) and evaluate one cell; the result is cached in `result.json`."""
    from kava.adapters import load_adapter
    from training.config import load_config
    from training.data.task import held_out
    from training.evaluate import evaluate
    from training.run import train

    out = work / f"{style}-{name}-s{seed}"
    result_file = out / "result.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    _, overrides, mode = METHODS[name]
    cfg = load_config(
        RECIPE,
        [
            *overrides,
            f"data.style={style}",
            f"output_dir={out}",
            f"optim.max_steps={steps}",
            f"optim.seed={seed}",
            "optim.save_every=25",
            "eval.final=false",
            "resume=auto",  # a cell re-run continues its checkpoint
        ],
    )
    train(cfg, progress=False)
    model = load_adapter(out / "adapter", device="cpu")
    examples = held_out(style, n_eval)
    res = {
        "name": name,
        "style": style,
        "seed": seed,
        "steps": steps,
        mode: evaluate(model, examples, mode=mode, batch_size=50, progress=False),
    }
    if name == "kava":  # the cost comparison: the same adapter in both modes
        res["cot"] = evaluate(model, examples, mode="cot", batch_size=50, progress=False)
    if mode == "latent":  # are the latents used? the same adapter without a Jacobi pass
        res["latent_t0"] = evaluate(model, examples, mode="latent", batch_size=50, num_iterations=0, progress=False)
    res["eval_mode"] = mode
    result_file.write_text(json.dumps(res, indent=2))
    return res


def _spawn(name: str, style: str, seed: int, work: Path, steps: int, n_eval: int) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "KAVA_TORCH_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "training.table",
        "--one",
        name,
        style,
        str(seed),
        "--work",
        str(work),
        "--steps",
        str(steps),
        "--eval",
        str(n_eval),
    ]
    log.info("start %s/%s seed %d", style, name, seed)
    with (work / f"{style}-{name}-s{seed}.log").open("a") as f:
        subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, check=True)
    res = json.loads((work / f"{style}-{name}-s{seed}" / "result.json").read_text())
    log.info("done %s/%s seed %d: %.1f%%", style, name, seed, 100 * res[res["eval_mode"]]["accuracy"])
    return res


def render(results: list[dict[str, Any]]) -> str:
    """Markdown: accuracy per method and trace style (mean ± std over seeds, with the seed
    count when cells differ), then the KaVa adapter's cost in both modes."""
    by: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        by.setdefault((r["name"], r["style"]), []).append(r)
    styles = [s for s in STYLES if any(style == s for _, style in by)]
    counts = {len(v) for v in by.values()}
    lines = [f"| method | {' | '.join(STYLES[s] for s in styles)} |", "|---|" + "---|" * len(styles)]
    for name, (label, _, mode) in METHODS.items():
        cells = []
        for style in styles:
            accs = [100 * r[mode]["accuracy"] for r in by.get((name, style), [])]
            if not accs:
                cells.append("–")
                continue
            cell = f"{accs[0]:.1f}" if len(accs) == 1 else f"{statistics.mean(accs):.1f} ± {statistics.stdev(accs):.1f}"
            cells.append(cell if len(counts) == 1 else f"{cell} ({len(accs)} seed{'s' * (len(accs) > 1)})")
        lines.append(f"| {label} | {' | '.join(cells)} |")
    lines.append("")
    seeds = f"{counts.pop()} seed(s) per cell" if len(counts) == 1 else "seeds per cell in brackets"
    lines.append(f"Held-out accuracy (%), {seeds}.")
    used = [(METHODS[n][0], st, rs) for (n, st), rs in by.items() if all("latent_t0" in r for r in rs)]
    if used:
        lines += ["", "| are the latents used? | style | latent | latent, T = 0 (init pass only) |"]
        lines.append("|---|---|---|---|")
        for label, style, rs in used:
            t, t0 = (statistics.mean(100 * r[k]["accuracy"] for r in rs) for k in ("latent", "latent_t0"))
            lines.append(f"| {label} | {style} | {t:.1f} | {t0:.1f} |")
    lines.append("")
    lines.append(
        "| KaVa adapter, same questions | style | forward passes / q | generated tokens / q | ms / q (batch 50) |"
    )
    lines.append("|---|---|---|---|---|")
    for (name, style), rs in by.items():
        if name != "kava":
            continue
        r = rs[0]
        for mode in ("latent", "cot"):
            m = r[mode]
            lines.append(
                f"| {mode} | {style} | {m['forward_passes_per_question']:.1f} | "
                f"{m['generated_tokens_per_question']:.1f} | {1000 * m['seconds_per_question']:.2f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.table", description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("runs/table"))
    ap.add_argument("--steps", type=int, default=150, help="optimizer steps per run (batch 32)")
    ap.add_argument("--eval", type=int, default=300, help="held-out problems per evaluation")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--styles", default=",".join(STYLES))
    ap.add_argument("--one", nargs=3, metavar=("METHOD", "STYLE", "SEED"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.work.mkdir(parents=True, exist_ok=True)
    if args.one:
        import torch

        torch.set_num_threads(int(os.environ.get("KAVA_TORCH_THREADS", "1")))
        run_one(args.one[0], args.one[1], int(args.one[2]), args.work, args.steps, args.eval)
        return 0
    cells = [
        (m, s, seed) for seed in range(args.seeds) for s in args.styles.split(",") for m in args.methods.split(",")
    ]
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda c: _spawn(*c, args.work, args.steps, args.eval), cells))
    # every finished cell of this budget in the work dir, so later seeds or methods join earlier ones
    results = [json.loads(f.read_text()) for f in sorted(args.work.glob("*/result.json"))]
    results = [r for r in results if r["steps"] == args.steps]
    table = render(results)
    (args.work / "table.json").write_text(json.dumps(results, indent=2))
    (args.work / "table.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
