"""The prepared GPU run: the tests marked `gpu`, a profile of batch-1 solves (where a pass's
time goes: in the forward or around it, with and without CUDA graphs, then the top ops), then
the engine benchmark on CUDA in bf16 for the built-in model and for a Llama-3.2-1B-shaped model
with random weights, at batch 1, 8 and 32, packed and with CUDA graphs, with ms per latent
request set against the bandwidth bound.

    python -m benchmarks.gpu --out runs/gpu              # a CUDA machine; a few minutes on an H100/H200
    python -m benchmarks.gpu --device cpu --smoke --out /tmp/g   # the same code on CPU, tiny shapes

Bandwidth bound of a latent request at batch B: every forward pass reads every weight once
for the whole batch, so it costs at least weight bytes / memory bandwidth; a latent request
takes part in 1 + T + (generated tokens - 1) passes; bound = passes x weight bytes /
bandwidth / B. The bandwidth is measured here (a device-to-device copy) and, for known
GPUs, also given as the datasheet figure. The random model answers with fixed lengths
(its `<eos>` is switched off, so every row decodes its whole budget) and has no accuracy.

Each section is written to gpu.json / gpu.md as soon as it ends, and a failing section is
recorded and skipped, so a run cut short keeps what it measured. Reports only; asserts
nothing (the `gpu` tests assert).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import logging
import subprocess
import sys
import tempfile
import time
import traceback
from itertools import product
from pathlib import Path

import torch

from benchmarks.engine import HFAnchor, bench_engine, engine_table
from benchmarks.passes import bench_passes, passes_table, sync
from benchmarks.questions import Question, load_questions
from kava.adapters import load_adapter
from kava.backbone import KavaModel, load_tokenizer
from kava.builtin import BUILTIN_ADAPTER
from kava.config import LoraSettings, MethodConfig
from kava.fastlm import fast_lm

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
DATASHEET_TB_S = {"H200": 4.8, "H100 SXM": 3.35, "H100 PCIe": 2.0, "H100": 3.35, "A100-SXM4-80GB": 2.039,
                  "A100 80GB PCIe": 1.935, "A100": 1.555, "L40S": 0.864, "L4": 0.3, "A10G": 0.6}  # fmt: skip
# Llama-3.2-1B's shape (config.json of meta-llama/Llama-3.2-1B-Instruct), random weights
LLAMA_1B = dict(
    vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
    num_key_value_heads=8, head_dim=64, max_position_embeddings=131072, tie_word_embeddings=True,
    rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    rms_norm_eps=1e-5, hidden_act="silu", bos_token_id=None, eos_token_id=None, pad_token_id=None,
)  # fmt: skip
SMOKE = dict(LLAMA_1B, vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024)  # fmt: skip


def measure_bandwidth(device: torch.device, nbytes: int = 1 << 30, repeats: int = 10) -> float:
    """Bytes/s of a device-to-device copy (each byte read once and written once)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src)
    sync(device)
    return 2 * nbytes * repeats / (time.perf_counter() - t0)


def weight_bytes(model: KavaModel) -> int:
    """Bytes one fast-path forward pass reads in weights: every layer, the final norm, the head."""
    lm = fast_lm(model)
    tensors = [t for layer in lm.layers for t in vars(layer).values() if isinstance(t, torch.Tensor)]
    tensors += [p for layer in lm.layers for m in (layer.norm1, layer.norm2) for p in m.parameters()]
    tensors += [*lm.final_norm.parameters(), lm.head_w]
    return sum(t.numel() * t.element_size() for t in tensors)


def bound_rows(report: dict, wbytes: int, bandwidth: float) -> list[dict]:
    """ms per latent request, measured and at the bandwidth bound, per batch size."""
    rows = []
    for c in report["cells"]:
        if not c["path"].startswith("kava-latent"):
            continue
        bound_ms = c["passes_per_question"] * wbytes / bandwidth * 1000 / c["batch_size"]
        rows.append({"path": c["path"], "batch_size": c["batch_size"], "ms_per_latent_request": c["ms_per_question"],
                     "bound_ms": bound_ms, "of_bound": bound_ms / c["ms_per_question"]})  # fmt: skip
    return rows


def bound_table(rows: list[dict], wbytes: int, bandwidth: float) -> str:
    head = "| path | batch | ms / latent request | bandwidth bound ms | share of bound |\n|---|---|---|---|---|"
    body = [
        f"| {r['path']} | {r['batch_size']} | {r['ms_per_latent_request']:.2f} | {r['bound_ms']:.3f} | "
        f"{100 * r['of_bound']:.0f}% |"
        for r in rows
    ]
    note = f"\nWeights read per pass: {wbytes / 2**20:.1f} MiB; "
    note += f"bandwidth {bandwidth / 1e12:.2f} TB/s (measured copy).\n\n"
    return "\n".join([head, *body]) + note


def random_llama(shape: dict, device: torch.device, dtype: torch.dtype, work: Path) -> KavaModel:
    """A KavaModel over a randomly initialised Llama of `shape`: LoRA r=128 with non-zero B
    (so merging matters), M=24, T=3, and `<eos>` off so every answer has its full length."""
    from peft import LoraConfig, get_peft_model
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator([q.text for q in load_questions("held-out", 200)], trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>").save_pretrained(str(work))
    tokenizer = load_tokenizer(work)
    torch.manual_seed(0)
    with torch.device(device):
        lm = AutoModelForCausalLM.from_config(LlamaConfig(**shape), dtype=dtype, attn_implementation="sdpa")
    lm.eval().requires_grad_(False)
    lora = LoraSettings(dropout=0.0)
    lm = get_peft_model(lm, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=0.0,
                                       target_modules="all-linear", task_type="CAUSAL_LM"))  # fmt: skip
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.01)
    model = KavaModel(lm, tokenizer, MethodConfig(), "random-llama-3.2-1b-shape", lora).eval()
    model.ids = dataclasses.replace(model.ids, eos=-1)  # fixed answer lengths: no row ever stops early
    return model


def _section(report: dict, out: Path | None, name: str, fn) -> None:
    log.info("gpu run: %s", name)
    t0 = time.perf_counter()
    try:
        report[name] = fn()
    except Exception as exc:  # recorded, and the next section still runs
        log.exception("section %s failed", name)
        report[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    report[name + "_seconds"] = round(time.perf_counter() - t0, 1)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu.json").write_text(json.dumps(report, indent=2) + "\n")
        (out / "gpu.md").write_text(markdown(report))


def markdown(report: dict) -> str:
    parts = [f"# GPU run {report['date']} on {report['device_name']} (torch {report['torch']})\n"]
    tests = report.get("gpu_tests")
    if isinstance(tests, dict) and "summary" in tests:
        parts.append(f"Tests marked gpu: `{tests['summary']}` (exit {tests['returncode']})\n")
    for key, title in (("builtin", "Built-in model"), ("llama_1b_shape", "Llama-3.2-1B shape, random weights")):
        sec = report.get(key)
        if not isinstance(sec, dict):
            continue
        if "error" in sec:
            parts.append(f"## {title}\n\nfailed: {sec['error']}\n")
            continue
        parts.append(f"## {title} ({sec['dtype']})\n\n" + engine_table(sec["engine"]))
        parts.append(bound_table(sec["bound"], sec["weight_bytes"], sec["bandwidth_bytes_s"]))
        parts.append("One forward pass of each shape:\n\n" + passes_table(sec["passes"]))
    prof = report.get("profile")
    if isinstance(prof, dict) and "split" in prof:
        rows = [
            f"| {r['mode']} | {'yes' if r['graphs'] else 'no'} | {r['ms_per_pass']:.2f} | "
            f"{r['forward_ms_per_pass']:.2f} | {r['outside_ms_per_pass']:.2f} |"
            for r in prof["split"]
        ]
        head = "| mode | graphs | ms / pass | in the forward | outside it |\n|---|---|---|---|---|"
        parts.append("## Where a batch-1 pass's time goes\n\n" + "\n".join([head, *rows]) + "\n")
    if isinstance(prof, dict) and "cot" in prof:
        for mode in ("cot", "latent"):
            p = prof[mode]
            parts.append(
                f"## Profile: {mode}, batch 1 ({p['passes']} passes)\n\n```\n{p['by_self_cpu']}\n{p['by_device']}```\n"
            )
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="directory for gpu.json and gpu.md")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--batch-sizes", default="1,8,32")
    p.add_argument("-n", "--num-questions", type=int, default=64, help="questions per cell (the 1B model: half)")
    p.add_argument("--smoke", action="store_true", help="tiny shapes and few questions: check the script runs")
    p.add_argument("--sections", default="tests,profile,builtin,llama",
                   help="comma list of tests, profile, builtin, llama")  # fmt: skip
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        log.error("no CUDA device (torch %s); `--device cpu --smoke` checks the script", torch.__version__)
        return 2
    dtype = getattr(torch, args.dtype)
    sizes = [int(b) for b in args.batch_sizes.split(",")] if not args.smoke else [1, 2]
    n = args.num_questions if not args.smoke else 4
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    report: dict = {"date": datetime.date.today().isoformat(), "device_name": name, "torch": torch.__version__,
                    "dtype": args.dtype, "batch_sizes": sizes}  # fmt: skip
    nominal = next((tb for key, tb in DATASHEET_TB_S.items() if key in name), None)
    report["datasheet_tb_s"] = nominal
    sections = set(args.sections.split(","))
    if "tests" in sections:
        _section(report, args.out, "gpu_tests", _run_gpu_tests)
    bandwidth = measure_bandwidth(device, (1 << 30) if not args.smoke else (1 << 24), 10 if not args.smoke else 2)
    report["measured_bandwidth_tb_s"] = bandwidth / 1e12

    def engine(model: KavaModel, anchor: HFAnchor, questions: list[Question], limits: dict) -> dict:
        rep = bench_engine(model, questions, batch_sizes=sizes, max_new_tokens=limits, anchor=anchor, graphs=True)
        wbytes = weight_bytes(model)
        # is a Jacobi pass as cheap as a decode pass here?
        passes = bench_passes(model, batch_sizes=sizes, reps=20 if not args.smoke else 2)
        return {"dtype": str(model.dtype), "engine": rep, "weight_bytes": wbytes, "bandwidth_bytes_s": bandwidth,
                "bound": bound_rows(rep, wbytes, bandwidth), "passes": passes}  # fmt: skip

    def builtin() -> dict:
        kw = dict(device=device, dtype=dtype)
        model = load_adapter(BUILTIN_ADAPTER, **kw)
        anchor = HFAnchor.merge(load_adapter(BUILTIN_ADAPTER, **kw))
        return engine(model, anchor, load_questions("held-out", n), {"latent": 16, "cot": 96})

    def llama_1b() -> dict:
        with tempfile.TemporaryDirectory() as work:
            model = random_llama(SMOKE if args.smoke else LLAMA_1B, device, dtype, Path(work))
        anchor = HFAnchor(copy.deepcopy(model.lm).merge_and_unload(), model)
        questions = [Question(q.text) for q in load_questions("held-out", max(n // 2, max(sizes)))]
        out = engine(model, anchor, questions, {"latent": 16, "cot": 64})
        del model, anchor
        if device.type == "cuda":
            out["max_memory_allocated_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            torch.cuda.empty_cache()
        return out

    def profile() -> dict:
        model = load_adapter(BUILTIN_ADAPTER, device=device, dtype=dtype)
        return profile_solves(model, [q.text for q in load_questions("held-out", 8)], device)

    if "profile" in sections:
        _section(report, args.out, "profile", profile)
    if "builtin" in sections:
        _section(report, args.out, "builtin", builtin)
    if "llama" in sections:
        _section(report, args.out, "llama_1b_shape", llama_1b)
    sys.stdout.write(markdown(report))
    return 0


def profile_solves(model: KavaModel, questions: list[str], device: torch.device) -> dict:
    """Where a pass's time goes: torch.profiler over one-question CoT and latent solves (after
    a warm-up), the top ops by self CPU time (launches, copies, syncs) and by device time."""
    from torch.profiler import ProfilerActivity, profile

    from kava.generate import solve_batch

    solve_batch(model, questions[:1], mode="cot", max_new_tokens=8)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    out: dict = {"split": [pass_split(model, questions, device, *c) for c in product(("cot", "latent"), (False, True))]}
    for mode, limit in (("cot", 96), ("latent", 16)):
        passes = 0
        with profile(activities=activities) as prof:
            for q in questions:
                passes += solve_batch(model, [q], mode=mode, max_new_tokens=limit).results[0].forward_passes
            sync(device)
        table = prof.key_averages()
        out[mode] = {
            "passes": passes,
            "by_self_cpu": table.table(sort_by="self_cpu_time_total", row_limit=20),
            "by_device": table.table(sort_by="self_device_time_total", row_limit=12) if device.type == "cuda" else "",
        }
    return out


def pass_split(model: KavaModel, questions: list[str], device: torch.device, mode: str, graphs: bool) -> dict:
    """Wall ms a pass of one-question solves, and how much of it the forward itself takes
    (synchronised before and after, so queued device work lands inside): the rest is the
    step's host work around the forward."""
    import kava.running as running
    from kava.generate import solve_batch

    inside = [0.0]

    def timed(fn):
        def wrapper(*args, **kwargs):
            sync(device)
            t0 = time.perf_counter()
            result = fn(*args, **kwargs)
            sync(device)
            inside[0] += time.perf_counter() - t0
            return result

        return wrapper

    limit = 96 if mode == "cot" else 16
    solve_batch(model, questions[:1], mode=mode, max_new_tokens=limit, graphs=graphs)  # captures, allocations
    forward, run = running.forward, running.PassGraphs.run
    running.forward, running.PassGraphs.run = timed(forward), timed(run)
    try:
        sync(device)
        t0, passes = time.perf_counter(), 0
        for q in questions:
            passes += solve_batch(model, [q], mode=mode, max_new_tokens=limit, graphs=graphs).results[0].forward_passes
        sync(device)
        wall = time.perf_counter() - t0
    finally:
        running.forward, running.PassGraphs.run = forward, run
    ms = 1000 / passes
    return {"mode": mode, "graphs": graphs, "passes": passes, "ms_per_pass": wall * ms,
            "forward_ms_per_pass": inside[0] * ms, "outside_ms_per_pass": (wall - inside[0]) * ms}  # fmt: skip


def _run_gpu_tests() -> dict:
    # a module whose imports are missing on the GPU machine (the server's, say) must not stop the gpu tests
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "--tb=short"]
    cmd += ["--continue-on-collection-errors", "tests"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return {"returncode": proc.returncode, "summary": lines[-1] if lines else "", "tail": lines[-200:]}


if __name__ == "__main__":
    sys.exit(main())
