"""Imports flow one way (STYLE.md rule 1-2): server/ -> kava/ <- training/; clients/ stands alone;
benchmarks/ imports the library and the SDK, and nothing imports benchmarks/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "kava": {
        "server",
        "training",
        "clients",
        "benchmarks",
        "kava_cli",
        "kava_client",
        "fastapi",
        "prometheus_client",
        "argparse",
        "uvicorn",
        "httpx",
    },
    "training": {"server", "clients", "benchmarks", "kava_cli", "kava_client", "fastapi", "prometheus_client"},
    "server": {"training", "clients", "benchmarks", "kava_cli", "kava_client"},
    "clients": {"kava", "server", "training", "benchmarks", "kava_cli", "torch", "transformers"},
    # benchmarks drive servers over HTTP (the SDK) and load models through kava, never server/ itself
    "benchmarks": {"server", "kava_cli", "fastapi", "prometheus_client", "uvicorn"},
    "kava_cli": {"benchmarks"},  # `kava bench` imports it by name, only when asked
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_flow_one_way(package):
    files = list((ROOT / package).rglob("*.py"))
    bad = {str(f.relative_to(ROOT)): sorted(_imports(f) & FORBIDDEN[package]) for f in files}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"forbidden imports: {bad}"


def test_kava_library_does_not_print_or_read_env():
    for f in (ROOT / "kava").rglob("*.py"):
        src = f.read_text()
        assert "print(" not in src, f
        assert "os.environ" not in src, f


def test_the_checker_sees_imports(tmp_path):
    probe = tmp_path / "x.py"
    probe.write_text("import fastapi\nfrom server.app import x\nfrom . import y\n")
    assert _imports(probe) == {"fastapi", "server"}


def _project_imports(path: Path, package: str) -> set[str]:
    """Modules of `package` that `path` imports by name, `if TYPE_CHECKING:` blocks included."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    return {n for n in names if n.startswith(f"{package}.")}


def test_server_modules_import_each_other_without_a_cycle():
    """One direction inside server/ too (e.g. app -> routes -> context, never routes -> app)."""
    graph = {f"server.{f.stem}": _project_imports(f, "server") for f in (ROOT / "server").glob("*.py")}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        if module in path:
            raise AssertionError(f"import cycle: {' -> '.join((*path[path.index(module) :], module))}")
        if module in done:
            return
        for dep in graph.get(module, ()):
            visit(dep, (*path, module))
        done.add(module)

    for module in sorted(graph):
        visit(module, ())
