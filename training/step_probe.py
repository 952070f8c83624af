"""What the latents hold: decode each written step from the latent slot that step supervision assigns it.

`python -m training.step_probe --adapter DIR -n 200` runs held-out questions through the latent
phase (`kava.latent`, the inference code), then, for written step k of S, greedy-decodes from the
projected last-pass state of slot `step_slots(S, M)[k]` *alone* — the read-out that
`method.step_weight` trains (`kava.losses`). It reports, per step index, how often the decoded
text is the step exactly and how often its result (the number after `=`) is right. On an adapter
trained without step supervision the read-out is untrained, so expect ~0: the probe measures
whether supervised slots hold their step, not the method. Does not own evaluation (`kava eval`).
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence

import torch

from kava.backbone import KavaModel
from kava.latent import prefill, run_latents
from kava.prompts import Example, encode_prefixes, encode_steps, positions, trace_steps

_RESULT = re.compile(r"=\s*(-?[\d.,]+)")


def _result(step: str) -> str | None:
    m = _RESULT.search(step)
    return m.group(1).rstrip(".,") if m else None


@torch.inference_mode()
def decode_slots(model: KavaModel, examples: Sequence[Example], max_new: int = 16) -> list[list[str]]:
    """Per example, the text each of its written steps' slots decodes on its own."""
    cfg = model.config
    prefixes = encode_prefixes(model.tokenizer, [ex.question for ex in examples], model.ids, with_bot=True)
    pre = prefill(model, prefixes.to(model.device), init_slots=0)
    lat = run_latents(
        model, pre, num_latents=cfg.num_latents, num_iterations=cfg.num_iterations, sequential=cfg.sequential
    )
    sb = encode_steps(model.tokenizer, [trace_steps(ex.steps, cfg) for ex in examples], cfg.num_latents, model.ids.pad)
    if sb is None:
        return [[] for _ in examples]
    owners = sb.row.tolist()
    x = model.project(lat.hidden[sb.row.to(model.device), sb.slot.to(model.device)])[:, None]  # (K, 1, D)
    mask = torch.ones(len(owners), 1, dtype=torch.long, device=model.device)
    out = model(x, mask, positions(mask))
    picks = []
    for _ in range(max_new):
        nxt = out.logits[:, -1].float().index_fill_(-1, model.special_ids, float("-inf")).argmax(-1)  # (K,)
        picks.append(nxt)
        mask = torch.cat([mask, mask.new_ones(len(owners), 1)], dim=1)
        out = model(model.embed(nxt[:, None]), mask, positions(mask)[:, -1:], out.cache)
    ids = torch.stack(picks, 1).tolist()
    texts: list[list[str]] = [[] for _ in examples]
    for b, row in zip(owners, ids):
        text = model.tokenizer.decode(row, skip_special_tokens=True)
        texts[b].append(text.split(">>")[0] + ">>" if ">>" in text else text)
    return texts


def probe(model: KavaModel, examples: Sequence[Example], batch_size: int = 50) -> dict:
    """{step index: {n, exact, result}} over `examples` (fractions), plus "all"."""
    tally: dict[str, list[int]] = {}
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        for ex, decoded in zip(chunk, decode_slots(model, chunk)):
            for k, (want, got) in enumerate(zip(trace_steps(ex.steps, model.config), decoded)):
                for key in (str(k + 1), "all"):
                    t = tally.setdefault(key, [0, 0, 0])
                    t[0] += 1
                    t[1] += got.strip() == want.strip()
                    t[2] += _result(got) is not None and _result(got) == _result(want)
    return {k: {"n": n, "exact": e / n, "result": r / n} for k, (n, e, r) in sorted(tally.items())}


def main(argv: Sequence[str] | None = None) -> None:
    from kava.adapters import load_adapter
    from kava.builtin import BUILTIN_ADAPTER
    from training.data.generator import held_out_split

    ap = argparse.ArgumentParser(prog="python -m training.step_probe", description=__doc__.split("\n\n")[0])
    ap.add_argument("--adapter", default=str(BUILTIN_ADAPTER))
    ap.add_argument("-n", type=int, default=200, help="held-out problems of the built-in task")
    args = ap.parse_args(argv)
    model = load_adapter(args.adapter).eval()
    print(json.dumps(probe(model, held_out_split(args.n)), indent=2))


if __name__ == "__main__":
    main()
