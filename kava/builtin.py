"""Where the project's own small model lives (shipped inside the package).

`BUILTIN_BASE` is a from-scratch Llama-family backbone with its tokenizer; `BUILTIN_ADAPTER`
its KaVa adapter. `BUILTIN_ID` is the base-model id recorded in that adapter, resolved
here so the adapter loads from any checkout or install location.
"""

from __future__ import annotations

from pathlib import Path

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"
BUILTIN_BASE = BUILTIN_DIR / "base"
BUILTIN_ADAPTER = BUILTIN_DIR / "adapter"
BUILTIN_ID = "kava-builtin"


def resolve_base(name_or_path: str | Path) -> str:
    """Map the built-in id to its directory; anything else (local path or hub id) passes through."""
    return str(BUILTIN_BASE) if str(name_or_path) == BUILTIN_ID else str(name_or_path)


def builtin_available() -> bool:
    return (BUILTIN_BASE / "config.json").is_file() and (BUILTIN_ADAPTER / "kava_config.json").is_file()
