"""The SDK stands alone (STYLE.md rule 1): stdlib + httpx + pydantic, its own pyproject, no torch."""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

import kava_client

ROOT = Path(__file__).resolve().parents[2]
SDK = ROOT / "clients"
ALLOWED = {"httpx", "pydantic", "kava_client"}


def _top_level_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_sdk_imports_only_stdlib_httpx_and_pydantic():
    files = sorted((SDK / "kava_client").rglob("*.py"))
    assert len(files) >= 5
    bad = {str(f.relative_to(ROOT)): sorted(_top_level_imports(f) - ALLOWED - sys.stdlib_module_names) for f in files}
    assert not {k: v for k, v in bad.items() if v}, f"clients/ must import nothing but httpx and pydantic: {bad}"


def test_solve_command_imports_only_the_sdk():
    imports = _top_level_imports(ROOT / "kava_cli" / "solve.py")
    assert not imports & {"torch", "transformers", "kava", "server", "training", "fastapi"}, imports


def test_the_checker_sees_imports(tmp_path):
    probe = tmp_path / "x.py"
    probe.write_text("import torch.nn\nfrom kava.latent import x\nfrom . import y\nimport httpx\n")
    assert _top_level_imports(probe) - ALLOWED - sys.stdlib_module_names == {"torch", "kava"}


def test_sdk_pyproject_depends_on_httpx_and_pydantic_only():
    project = tomllib.loads((SDK / "pyproject.toml").read_text())["project"]
    assert project["name"] == "kava-client"
    assert project["version"] == kava_client.__version__
    assert sorted(d.split(">")[0].split("<")[0].split("=")[0].strip() for d in project["dependencies"]) == [
        "httpx",
        "pydantic",
    ]


def test_every_module_has_a_docstring():
    for f in (SDK / "kava_client").rglob("*.py"):
        assert ast.get_docstring(ast.parse(f.read_text())), f"{f.name} needs a module docstring"
