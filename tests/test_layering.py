"""The package layering (README, Design): each package of simulator/ imports only the packages
before it in LAYERS (and itself), and no module grows past MAX_LINES.

Every module under simulator/ is parsed with `ast`; every import counts, including lazy imports
inside functions and relative forms (`from . import x`, `from ..engine import y`).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "simulator"
# Import order: a package may import the ones before it. `simulator` itself (the version),
# simulator.errors and simulator.user_files (reading the files users hand the tool: scenario,
# trace, profile, calibration) sit below every layer.
LAYERS = ("hardware", "physics", "latency", "config", "deploy", "engine", "analysis", "run",
          "measure", "fidelity", "cli")
BASE = {"simulator", "simulator.errors", "simulator.user_files"}
MAX_LINES = 400


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import in the file, relative ones resolved."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from pkg import sub` may name a submodule: judge pkg.sub as well as pkg.
            out += [(node.lineno, mod)] + [(node.lineno, f"{mod}.{a.name}") for a in node.names]
    return out


def layer_of(module: str) -> int | None:
    """Index in LAYERS of a simulator module; -1 for BASE; None outside simulator."""
    parts = module.split(".")
    if parts[0] != "simulator":
        return None
    if module in BASE or len(parts) == 1:
        return -1
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else None


def violations(path: Path, root: Path = ROOT) -> list[str]:
    own = layer_of(module_name(path, root))
    bad = []
    for line, mod in imported_modules(path, root):
        layer = layer_of(mod)
        if layer is not None and own is not None and layer > own:
            bad.append(f"{path.relative_to(root.parent)}:{line} imports {mod} "
                       f"({LAYERS[layer]} comes after {LAYERS[own]})")
    return bad


MODULES = sorted(ROOT.rglob("*.py"))


def test_every_module_belongs_to_a_layer():
    stray = [str(p.relative_to(ROOT.parent)) for p in MODULES if layer_of(module_name(p)) is None]
    assert not stray, f"modules outside the layer packages {LAYERS}: {stray}"


def test_no_package_imports_a_later_one():
    bad = [v for p in MODULES for v in violations(p)]
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_no_module_over_max_lines():
    long = {str(p.relative_to(ROOT.parent)): n for p in MODULES
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


@pytest.mark.parametrize("source, expected", [
    ("from simulator.engine.replica import Replica\n", "simulator.engine.replica"),
    ("def f():\n    from simulator.engine import replica\n", "simulator.engine.replica"),
    ("from ..engine import replica\n", "simulator.engine.replica"),
    ("from .. import engine\n", "simulator.engine"),
    ("import simulator.run.runner as r\n", "simulator.run.runner"),
])
def test_the_check_catches_physics_importing_engine(tmp_path, source, expected):
    """The walker sees absolute, lazy and relative imports: a physics module importing the engine
    in any of these forms is reported with its file and the import."""
    root = tmp_path / "simulator"
    (root / "physics").mkdir(parents=True)
    bad = root / "physics" / "bad.py"
    bad.write_text(source)
    found = violations(bad, root)
    assert any(v.startswith("simulator/physics/bad.py:") and f"imports {expected}" in v
               for v in found), found


def test_the_check_allows_earlier_layers_and_own_package(tmp_path):
    root = tmp_path / "simulator"
    (root / "engine").mkdir(parents=True)
    ok = root / "engine" / "ok.py"
    ok.write_text("from simulator.physics import acceptance\nfrom . import records\n"
                  "from simulator.errors import SpecsimError\nimport numpy\n")
    assert violations(ok, root) == []
