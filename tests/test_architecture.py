"""The package's shape, checked by parsing its sources: imports point down the layers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "u2ad_core"

# Bottom to top. A module may import from its own subpackage or from a lower layer, never from a
# higher one or a peer on the same rank (baselines and detectors do not know each other).
LAYERS = {
    "core": 0,
    "data": 1,
    "metrics": 2,
    "method": 3,
    "baselines": 4,
    "detectors": 4,
    "book": 5,
    "experiments": 6,
    "cli": 7,
    "__main__": 8,
    "__init__": 8,
}


def _layer(module: str) -> str:
    """'u2ad_core.method.train' -> 'method'; 'u2ad_core.cli' -> 'cli'; 'u2ad_core' -> '__init__'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, module: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module) of every ``u2ad_core`` import in the file, relative ones resolved;
    ``module``: the file's dotted name (default: from its place in the package)."""
    module = module or _module_name(path)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("u2ad_core")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("u2ad_core"):
                if target == "u2ad_core" or target.count(".") == 1:  # from u2ad_core(.x) import y
                    out += [(node.lineno, f"{target}.{a.name}") for a in node.names]
                else:
                    out.append((node.lineno, target))
    return out


def _sources() -> list[Path]:
    return sorted(PKG.rglob("*.py"))


def test_every_subpackage_has_a_layer():
    for p in _sources():
        layer = _layer(_module_name(p))
        assert layer in LAYERS, f"{p.relative_to(PKG.parent)}: layer {layer!r} is not in LAYERS"


def _violations(path: Path, module: str | None = None) -> list[str]:
    module = module or _module_name(path)
    here = _layer(module)
    bad = []
    for line, target in _imports(path, module):
        there = _layer(target)
        if there == here or there not in LAYERS:  # own subpackage; ``from u2ad_core import __version__``
            continue
        if LAYERS[there] >= LAYERS[here]:
            bad.append(f"{module}:{line}: {here} imports {target} ({there})")
    return bad


def test_imports_point_down_the_layers():
    bad = [v for p in _sources() for v in _violations(p)]
    assert not bad, "imports that point up or sideways:\n" + "\n".join(bad)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The rule is not vacuous: a data module importing the method layer (absolute or
    relative) or a peer is caught; its own and lower layers pass."""
    probe = tmp_path / "probe.py"
    probe.write_text("from u2ad_core.method.train import pretrain\n"
                     "from ..method import masking\n"
                     "from ..core import config\n"
                     "from .io import load_subject\n"
                     "from u2ad_core import metrics\n")
    bad = _violations(probe, "u2ad_core.data.probe")
    assert [b.split(": ", 1)[1] for b in bad] == [
        "data imports u2ad_core.method.train (method)",
        "data imports u2ad_core.method.masking (method)",
        "data imports u2ad_core.metrics (metrics)",
    ]
    peer = tmp_path / "peer.py"
    peer.write_text("from u2ad_core.detectors import nets\n")
    assert _violations(peer, "u2ad_core.baselines.peer")


@pytest.mark.parametrize("layer", sorted(k for k in LAYERS if not k.startswith("_") and k != "cli"))
def test_layer_is_a_folder(layer):
    assert (PKG / layer / "__init__.py").is_file(), f"u2ad_core/{layer}/ is not a subpackage"


MAX_FUNCTION_LINES = 120
MAX_MODULE_LINES = 700


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_functions_and_modules_are_short():
    long_fn = [f"{p.relative_to(PKG.parent)}:{f.lineno} {f.name} ({f.end_lineno - f.lineno + 1} lines)"
               for p in _sources() for f in _functions(p) if f.end_lineno - f.lineno + 1 > MAX_FUNCTION_LINES]
    big = [f"{p.relative_to(PKG.parent)} ({n} lines)" for p in _sources()
           if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    assert not long_fn, f"functions over {MAX_FUNCTION_LINES} lines: {long_fn}"
    assert not big, f"modules over {MAX_MODULE_LINES} lines: {big}"


def _late_imports(path: Path, name: str | None = None) -> list[str]:
    """Imports inside a function whose line gives no reason (a ``#`` comment)."""
    name = name or str(path.relative_to(PKG.parent))
    lines = path.read_text().splitlines()
    out = []
    for f in _functions(path):
        for node in ast.walk(f):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and "#" not in lines[node.lineno - 1]:
                out.append(f"{name}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    return out


def test_imports_inside_functions_say_why():
    """Imports sit at the top of a module; one inside a function carries its reason (import time
    of every ``u2ad`` command, a cycle) in a comment on its line."""
    bad = [b for p in _sources() for b in _late_imports(p)]
    assert not bad, "imports inside functions without a reason:\n" + "\n".join(bad)


def test_late_import_check_can_fail(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import sys\n\n\ndef f():\n    import json\n    import os  # reason\n    return json, os, sys\n")
    assert _late_imports(probe, "probe") == ["probe:5: import json"]


def test_size_check_can_fail(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n" + "    x = 1\n" * MAX_FUNCTION_LINES + "    return x\n")
    assert [f.end_lineno - f.lineno + 1 for f in _functions(probe)] == [MAX_FUNCTION_LINES + 2]


# Names every module of a kind defines on purpose, one per module: a command's parser, a
# baseline's registry record, a run family's file-format number.
PER_MODULE_NAMES = {"cli_register", "METHOD", "FORMAT_VERSION", "__all__"}


def _public_definitions(path: Path) -> list[str]:
    names = []
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names += [t.id for t in targets if isinstance(t, ast.Name)]
    return [n for n in names if not n.startswith("_") and n not in PER_MODULE_NAMES]


def test_one_meaning_per_public_name():
    """A public name is defined in one module only (others import it): no two functions called
    ``fit`` or ``reconstruction_metrics`` that do different things."""
    where: dict[str, list[str]] = {}
    for p in _sources():
        for name in _public_definitions(p):
            where.setdefault(name, []).append(str(p.relative_to(PKG.parent)))
    twice = {n: w for n, w in where.items() if len(w) > 1}
    assert not twice, f"public names defined in more than one module: {twice}"
