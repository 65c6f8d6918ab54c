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


def test_meld_table_presets_carry_the_papers_values():
    """The early-fusion paper's Table 3 rows: pretrained = fine-tuned config with 0 steps; the
    paper's LoRA (r 8, alpha 16, dropout 0.1), backbones and Listing 1 prompt."""
    from configs import early_fusion, text_baseline
    hints = {"llama3_8b": "Meta-Llama-3-8B-Instruct", "mistral_7b": "Mistral-7B-Instruct-v0.3"}
    for backbone in ("smoke", "llama3_8b", "mistral_7b"):
        pre = text_baseline.get_config(f"pretrained_{backbone}")
        fine = text_baseline.get_config(f"finetuned_{backbone}")
        multi = early_fusion.get_config(backbone)
        assert (pre.stages.sft.steps, pre.stages.sft.epochs) == (0, 0) and fine.stages.sft.epochs > 0
        assert pre.data.template == fine.data.template == "listing1" and multi.data.template == "early_fusion"
        for c in (pre, fine, multi):
            lora = c.model.lora
            assert (lora.rank, lora.alpha, lora.dropout) == (8, 16.0, 0.1)
            assert c.model.get("path_hint", "") == hints.get(backbone, "")
        # the rows differ only where the paper's rows do
        a, b = pre.to_dict(), fine.to_dict()
        for d in (a, b):
            d.pop("preset")
            d["stages"]["sft"].pop("steps")
            d["stages"]["sft"].pop("epochs")
        assert a == b
    assert text_baseline.get_config("finetuned_llama3_8b").to_dict() == \
        dict(text_baseline.get_config("llama3_8b").to_dict(), preset="finetuned_llama3_8b")
