"""Readers that turn GSM8k-family files into `Example`s, and the number parser for answers.

Owns three on-disk layouts and one dispatcher:
- GSM8k JSONL (`{"question", "answer"}`, the answer being sentences with `<<48/2=24>>`
  calculator annotations and a final `#### 72`), converted to either trace style:
  `equation` keeps the annotations in order, `nl` keeps the sentences with them removed;
- GSM8k-Aug text as released with iCoT (`question||<<a=b>> <<c=d>> #### answer`);
- GSM8k-AUG records (`question`, `steps` list, `answer`) in JSONL or Parquet;
- `load_examples(source)` picks one by extension, or reads `hub:owner/name` through the
  optional `datasets` package, or `builtin:N:seed` from the generator.

Rows that cannot be parsed are skipped and counted (`ExampleList.skipped`, plus one warning
per file); `strict=True` raises on the first instead. Answers are normalised with
`parse_number`, so they compare as numbers. Does not own tokenisation (`kava.prompts`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Generator, Iterable, Mapping
from itertools import islice
from pathlib import Path
from typing import Any, Literal

from kava.answers import parse_number, same_number  # noqa: F401  (re-exported)
from kava.prompts import Example

log = logging.getLogger(__name__)

Style = Literal["equation", "nl"]
ANNOTATION = re.compile(r"<<[^<>]*>>")  # one calculator annotation, e.g. <<48/2=24>>


class ExampleList(list[Example]):
    """Examples read from one source, with how many of its rows were skipped as unparseable."""

    def __init__(self, items: Iterable[Example] = (), *, source: str = "", skipped: int = 0) -> None:
        super().__init__(items)
        self.source = source
        self.skipped = skipped


class _BadRow(ValueError):
    pass


# 1. Numbers: one parser for the whole project, in kava.answers ------------------------------
def _answer(text: Any) -> str:
    number = parse_number(str(text))
    if number is None:
        raise _BadRow(f"answer {str(text)[:40]!r} has no number")
    return number


def _question(text: Any) -> str:
    if not isinstance(text, str) or not text.strip():
        raise _BadRow("empty or non-string question")
    return text.strip()


# 2. Row converters ---------------------------------------------------------------------------
def example_from_gsm8k(row: Mapping[str, Any], style: Style = "equation") -> Example:
    """One GSM8k row. A solution without annotations gives no equation steps (kept, like Aug)."""
    solution = row["answer"]
    if not isinstance(solution, str) or "####" not in solution:
        raise _BadRow("solution has no '#### answer' line")
    body, final = solution.rsplit("####", 1)
    if style == "equation":
        steps = tuple(ANNOTATION.findall(body))
    else:
        steps = tuple(s for s in (ANNOTATION.sub("", line).strip() for line in body.splitlines()) if s)
    return Example(question=_question(row["question"]), steps=steps, answer=_answer(final))


def example_from_aug_line(line: str) -> Example:
    """One GSM8k-Aug text line: `question||<<a=b>> <<c=d>> #### answer`."""
    question, sep, rest = line.partition("||")
    trace, hashes, final = rest.rpartition("####")
    if not sep or not hashes:
        raise _BadRow("expected 'question||steps #### answer'")
    return Example(question=_question(question), steps=tuple(ANNOTATION.findall(trace)), answer=_answer(final))


def example_from_record(row: Mapping[str, Any]) -> Example:
    """One GSM8k-AUG record: `question`, `steps` (list of str), `answer`."""
    steps = row["steps"]
    if not isinstance(steps, list | tuple) or not all(isinstance(s, str) for s in steps):
        raise _BadRow(f"steps must be a list of strings, got {type(steps).__name__}")
    return Example(
        question=_question(row["question"]), steps=tuple(s.strip() for s in steps), answer=_answer(row["answer"])
    )


# 3. Files ------------------------------------------------------------------------------------
def _existing(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no data file at {str(p)!r}")
    return p


def _convert(
    rows: Iterable[tuple[str, Any]], convert: Callable[[Any], Example], source: str, strict: bool
) -> ExampleList:
    """Apply `convert` to (where, row) pairs; a row that is an exception or fails is skipped."""
    out: list[Example] = []
    skipped, first = 0, ""
    for where, row in rows:
        try:
            if isinstance(row, Exception):
                raise row
            out.append(convert(row))
        except (ValueError, KeyError, TypeError) as err:
            reason = f"{where}: {type(err).__name__}: {err}"
            if strict:
                raise ValueError(f"unparseable row at {reason}") from err
            skipped, first = skipped + 1, first or reason
    if skipped:
        log.warning("%s: skipped %d unparseable row(s) of %d; first at %s", source, skipped, skipped + len(out), first)
    return ExampleList(out, source=source, skipped=skipped)


def _jsonl_rows(path: Path) -> Generator[tuple[str, Any], None, None]:
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield f"{path}:{n}", json.loads(line)
                except json.JSONDecodeError as err:
                    yield f"{path}:{n}", err


def _is_record_layout(rows: list[tuple[str, Any]]) -> bool:
    """GSM8k-AUG records carry `steps`; raw GSM8k rows do not. Decided by the first good row."""
    first = next((r for _, r in rows if isinstance(r, Mapping)), {})
    return "steps" in first


def read_gsm8k_jsonl(path: str | Path, style: Style = "equation", *, strict: bool = False) -> ExampleList:
    """Raw GSM8k JSONL in either trace style (see `example_from_gsm8k`)."""
    _check_style(style)
    p = _existing(path)
    return _convert(_jsonl_rows(p), lambda r: example_from_gsm8k(r, style), str(p), strict)


def read_gsm8k_aug_txt(path: str | Path, *, strict: bool = False) -> ExampleList:
    """GSM8k-Aug text, one `question||<<a=b>> ... #### answer` a line (equation steps only)."""
    p = _existing(path)
    with p.open(encoding="utf-8") as f:
        rows = [(f"{p}:{n}", line.rstrip("\n")) for n, line in enumerate(f, 1) if line.strip()]
    return _convert(rows, example_from_aug_line, str(p), strict)


def read_aug_records(path: str | Path, *, strict: bool = False) -> ExampleList:
    """GSM8k-AUG records from `.jsonl` or `.parquet` (Parquet needs pyarrow)."""
    p = _existing(path)
    if p.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as err:
            raise ImportError(f"reading {str(p)!r} needs pyarrow: pip install pyarrow") from err
        rows: Iterable[tuple[str, Any]] = ((f"{p}#{i}", r) for i, r in enumerate(pq.read_table(p).to_pylist()))
    else:
        rows = _jsonl_rows(p)
    return _convert(rows, example_from_record, str(p), strict)


# 4. Dispatch ---------------------------------------------------------------------------------
def _check_style(style: str) -> None:
    if style not in ("equation", "nl"):
        raise ValueError(f"style must be 'equation' or 'nl', got {style!r}")


def _warn_style(examples: ExampleList, style: Style) -> ExampleList:
    """AUG records carry their own steps; say so when they do not look like the asked style."""
    steps = [s for ex in examples for s in ex.steps]
    annotated = sum(bool(ANNOTATION.fullmatch(s)) for s in steps)
    off = len(steps) - annotated if style == "equation" else annotated
    if off:
        log.warning(
            "%s: style=%r asked, but %d of %d steps are %s; records are used as stored",
            examples.source,
            style,
            off,
            len(steps),
            "sentences" if style == "equation" else "equations",
        )
    return examples


def _read_file(p: Path, style: Style, strict: bool) -> ExampleList:
    if p.suffix == ".txt":
        if style != "equation":
            raise ValueError(f"{str(p)!r} is GSM8k-Aug text, which has equation steps only; use style='equation'")
        return read_gsm8k_aug_txt(p, strict=strict)
    if p.suffix == ".parquet":
        return _warn_style(read_aug_records(p, strict=strict), style)
    if p.suffix == ".jsonl":
        rows = _jsonl_rows(p)
        head = list(islice(rows, 5))
        rows.close()  # closes the file now rather than at garbage collection
        if _is_record_layout(head):
            return _warn_style(read_aug_records(p, strict=strict), style)
        return read_gsm8k_jsonl(p, style, strict=strict)
    raise ValueError(f"unsupported data file {str(p)!r}; use .jsonl, .txt or .parquet")


def _load_hub(name: str, split: str | None, style: Style, strict: bool) -> ExampleList:
    try:
        import datasets
    except ImportError as err:
        raise ImportError(
            f"'hub:{name}' needs the datasets package: pip install datasets "
            "(or download the files and pass a local path)"
        ) from err
    # hub:owner/name[:config][@split], e.g. hub:openai/gsm8k:main@test
    name, _, at = name.partition("@")
    split = at or split or "train"
    name, _, subset = name.partition(":")
    ds = datasets.load_dataset(name, subset or None, split=split)
    source = f"hub:{name}[{split}]"
    rows = [(f"{source}#{i}", r) for i, r in enumerate(ds)]
    if _is_record_layout(rows):
        return _warn_style(_convert(rows, example_from_record, source, strict), style)
    return _convert(rows, lambda r: example_from_gsm8k(r, style), source, strict)


def _load_builtin(spec: str, style: Style) -> ExampleList:
    from training.data.generator import generate

    try:
        n, seed = (int(x) for x in spec.split(":"))
    except ValueError as err:
        raise ValueError(
            f"builtin source must be 'builtin:N:seed' (e.g. 'builtin:1000:0'), got 'builtin:{spec}'"
        ) from err
    return ExampleList(generate(n, seed=seed, style=style), source=f"builtin:{spec}")


def load_examples(
    source: str | Path, *, style: Style = "equation", split: str | None = None, strict: bool = False
) -> ExampleList:
    """Examples from a file, a directory + split, `hub:owner/name` or `builtin:N:seed`.

    Files dispatch by extension: `.jsonl` (raw GSM8k or AUG records, told apart by their
    keys), `.txt` (GSM8k-Aug), `.parquet` (AUG records). A directory needs `split` and is
    searched for `{split}.jsonl`, `{split}.parquet`, `{split}.txt` in that order.
    """
    _check_style(style)
    text = str(source)
    if text.startswith("hub:"):
        return _load_hub(text[4:], split, style, strict)
    if text.startswith("builtin:"):
        return _load_builtin(text[8:], style)
    p = Path(text)
    if p.is_dir():
        if split is None:
            raise ValueError(f"{text!r} is a directory; pass split= (e.g. 'train' or 'test')")
        tried = [p / f"{split}{ext}" for ext in (".jsonl", ".parquet", ".txt")]
        found = next((t for t in tried if t.is_file()), None)
        if found is None:
            raise FileNotFoundError(f"no data file for split {split!r}: tried {[str(t) for t in tried]}")
        return _read_file(found, style, strict)
    if split is not None:
        raise ValueError(f"split={split!r} applies to directories and hub: sources, not the file {text!r}")
    return _read_file(_existing(p), style, strict)
