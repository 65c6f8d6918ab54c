"""Configs are data: reading one loads no runtime, every preset builds, imports stay light."""
from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ("meria", "text_baseline", "early_fusion")
ALLOWED = {"__future__", "ml_collections", "configs.common"}  # what configs/<system>.py may import
COMMON_ALLOWED = {"__future__", "ml_collections", "os", "typing"}  # configs/common.py: the stdlib too
HEAVY = ("jax", "flax", "numpy", "optax", "grain")


def _imports(path: str) -> set[str]:
    """Top-level module names a file imports (ml_collections.config_dict counts as ml_collections)."""
    names = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module or "")
    return {n if n == "configs.common" else n.split(".")[0] for n in names}


@pytest.mark.parametrize("name", CONFIGS + ("common",))
def test_config_file_imports_only_ml_collections_and_common(name):
    used = _imports(os.path.join(REPO, "configs", f"{name}.py"))
    allowed = COMMON_ALLOWED if name == "common" else ALLOWED
    assert used <= allowed, f"configs/{name}.py imports {sorted(used - allowed)}"


def test_reading_every_preset_loads_no_runtime():
    code = textwrap.dedent(f"""
        import importlib, sys
        for name in {CONFIGS!r}:
            m = importlib.import_module("configs." + name)
            for preset in m.PRESETS:
                m.get_config(preset)
        print(sorted(k for k in sys.modules if k.split(".")[0] in {HEAVY!r}))
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": REPO})
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize("name", CONFIGS)
def test_every_preset_builds(name):
    m = importlib.import_module(f"configs.{name}")
    assert m.PRESETS
    for preset in m.PRESETS:
        c = m.get_config(preset)
        assert c.preset == preset and c.system == name and c.stage_order
        assert all(n in c.stages for n in c.stage_order)
    assert m.get_config().preset == "smoke"
    with pytest.raises(ValueError, match="unknown preset"):
        m.get_config("no_such_preset")
