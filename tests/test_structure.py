"""The library's layering: every module imports on its own in a fresh interpreter, the module-level imports
form no circle, and a module imports another of ours inside a function only where that one pulls a heavy
optional dependency (torch, a provider's SDK): the backend registries and the torch-bound training modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from graphlib import CycleError, TopologicalSorter

from conftest import ROOT

PACKAGE = ROOT / "character"
# Modules that import torch (or a provider's SDK, or are a backend behind a registry): the only targets a
# function-local import may name.
HEAVY = {"character.training.trl", "character.merge", "character.inference.hf", "character.inference.vllm",
         "character.inference.tinker", "character.inference.openai_compat", "character.inference.embedded",
         "character.inference.shared_head", "character.training.tinker", "character.training.together"}


def modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(path.read_text(encoding="utf-8"))
    return out


def imported(name: str, is_package: bool, node: ast.ImportFrom | ast.Import, known: set[str]) -> set[str]:
    """Our modules that one import statement names."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in known}
    if node.level:
        base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    found = {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known}
    return found or ({target} if target in known and target != "character" else set())


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module-level imports, function-local imports) of our modules, per module."""
    mods = modules()
    known = set(mods)
    top: dict[str, set[str]] = {m: set() for m in mods}
    local: dict[str, set[str]] = {m: set() for m in mods}
    for name, tree in mods.items():
        is_package = (PACKAGE / "/".join(name.split(".")[1:]) / "__init__.py").exists()
        body = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                (top if id(node) in body else local)[name] |= imported(name, is_package, node, known) - {name}
    return top, local


def test_no_import_circle():
    top, _ = import_graph()
    try:
        order = list(TopologicalSorter(top).static_order())
    except CycleError as e:
        raise AssertionError(f"import circle: {' -> '.join(e.args[1])}") from None
    assert order.index("character.errors") < order.index("character.recipe") < order.index("character.pipeline")


def test_function_local_imports_only_for_heavy_modules():
    _, local = import_graph()
    light = {f"{m} -> {t}" for m, targets in local.items() for t in targets if t not in HEAVY}
    assert not light, f"import these at the top of the module (they pull no heavy dependency): {sorted(light)}"


def test_every_module_imports_alone():
    names = sorted(modules())

    def alone(name: str) -> tuple[str, int, str]:
        r = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=ROOT, capture_output=True, text=True)
        return name, r.returncode, r.stderr[-400:]

    with ThreadPoolExecutor(4) as pool:
        failed = [f"{n}: {err}" for n, rc, err in pool.map(alone, names) if rc]
    assert not failed, "\n".join(failed)


# Third-party packages a function may import for itself: optional extras, heavy to load, each needed only by the
# backend, scorer or figure that uses it. Everything else (the standard library, numpy, pydantic, yaml, tqdm,
# dotenv, streamlit in the studio) is imported at the top of its module.
OPTIONAL = {"torch", "transformers", "peft", "trl", "datasets", "accelerate", "bitsandbytes", "safetensors", "vllm",
            "tinker", "tinker_cookbook", "together", "zstandard", "openai", "llguidance", "gguf",
            "sentence_transformers", "sklearn", "joblib", "matplotlib", "plotly", "pandas", "tabulate",
            "if_verifiable", "langdetect"}


def test_function_local_imports_of_other_packages_are_optional_extras():
    found = set()
    for path in sorted([*PACKAGE.rglob("*.py"), *(ROOT / "studio").rglob("*.py")]):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        body = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if id(node) in body or not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("character")):
                continue  # ours: test_function_local_imports_only_for_heavy_modules
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found |= {f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] not in OPTIONAL
                      and n.split(".")[0] != "character"}
    assert not found, f"import these at the top of the module: {sorted(found)}"
