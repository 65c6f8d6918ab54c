"""Systems: what is trained (model parts, data views, losses) on the shared runtime."""
from __future__ import annotations

import importlib

# name -> "module:Class"; imported lazily so a config error shows before heavy imports.
SYSTEMS = {
    "text_baseline": "merg_jax.systems.text_baseline:TextBaseline",
    "early_fusion": "merg_jax.systems.early_fusion:EarlyFusion",
    "meria": "merg_jax.systems.meria:Meria",
}


def get_system(name: str):
    """The System class `config.system` names."""
    if not name:
        raise ValueError("config: system is empty; use a config file from configs/ "
                         "(e.g. --config=configs/meria.py:smoke)")
    if name not in SYSTEMS:
        raise ValueError(f"config.system={name!r} is unknown; use one of {sorted(SYSTEMS)}")
    module, cls = SYSTEMS[name].split(":")
    return getattr(importlib.import_module(module), cls)
