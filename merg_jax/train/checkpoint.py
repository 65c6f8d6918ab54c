"""Orbax checkpoints of a training run: resumable state, fallback, and the frozen-base reference.

Layout in the workdir:
  checkpoints/<step>/{params,opt_state,data,meta}  latest N (resume)
  best/<step>/{params,meta}                        best N by an eval metric
`params` holds only what some stage trains (the union of the stages' trainable
sets), so a LoRA run stores adapters and projectors, never the base; `meta`
names the base weights by path and checksum so a restore onto different
weights fails loudly instead of silently producing a different model.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


def file_checksum(path: str, chunk: int = 16 << 20) -> str:
    """sha256 over the size, the first and the last 16 MiB of each weight file.

    Hashing a 60 GB base in full would cost minutes on every start; size plus both
    ends catches a different file, a truncated copy or a re-quantised export.
    """
    h = hashlib.sha256()
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(path, f) for f in os.listdir(path)
        if f.endswith((".safetensors", ".gguf", ".json", ".bin")))
    for f in files:
        size = os.path.getsize(f)
        h.update(f"{os.path.basename(f)}:{size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(chunk))
            if size > 2 * chunk:
                fh.seek(size - chunk)
                h.update(fh.read(chunk))
    return h.hexdigest()


class Checkpointer:
    """Latest-N and best-N Orbax managers with fallback to an older step on a bad restore."""

    def __init__(self, workdir: str, *, keep: int = 2, keep_best: int = 1, best_metric: str = "",
                 best_mode: str = "min", async_save: bool = True):
        self.workdir = os.path.abspath(workdir)
        opts = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                            create=True)
        self.latest = ocp.CheckpointManager(os.path.join(self.workdir, "checkpoints"), options=opts,
                                            item_names=("params", "opt_state", "data", "meta"))
        self.best_metric = best_metric
        self.best = None
        if best_metric:
            bopts = ocp.CheckpointManagerOptions(
                max_to_keep=keep_best, best_fn=lambda m: m[best_metric], best_mode=best_mode,
                keep_checkpoints_without_metrics=False, enable_async_checkpointing=async_save, create=True)
            self.best = ocp.CheckpointManager(os.path.join(self.workdir, "best"), options=bopts,
                                              item_names=("params", "meta"))

    def steps(self) -> list[int]:
        return sorted(self.latest.all_steps(), reverse=True)

    def save(self, step: int, params: Any, meta: dict, *, opt_state: Any = None, data_iter=None,
             force: bool = False) -> None:
        import grain
        items = {"params": ocp.args.StandardSave(params), "meta": ocp.args.JsonSave(meta)}
        if opt_state is not None:
            items["opt_state"] = ocp.args.StandardSave(opt_state)
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        if step in self.latest.all_steps():  # one we fell back from: it did not restore
            log.warning("replacing checkpoint %d in %s/checkpoints (it could not be restored)", step, self.workdir)
            self.latest.delete(step)
        self.latest.save(step, args=ocp.args.Composite(**items), force=force)

    def save_best(self, step: int, params: Any, meta: dict, metrics: dict) -> None:
        if self.best is None:
            return
        self.best.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                                     meta=ocp.args.JsonSave(meta)), metrics=metrics)

    def read_meta(self, step: int) -> dict:
        return dict(self.latest.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])

    def restore(self, step: int, abstract_params: Any, *, abstract_opt_state: Any = None,
                data_iter=None) -> tuple[Any, Any]:
        """(params, opt_state); the data iterator's state is restored in place."""
        import grain
        items = {"params": ocp.args.StandardRestore(abstract_params)}
        if abstract_opt_state is not None:
            items["opt_state"] = ocp.args.StandardRestore(abstract_opt_state)
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        out = self.latest.restore(step, args=ocp.args.Composite(**items))
        return out["params"], (out["opt_state"] if abstract_opt_state is not None else None)

    def wait(self) -> None:
        self.latest.wait_until_finished()
        if self.best is not None:
            self.best.wait_until_finished()

    def close(self) -> None:
        self.wait()
        self.latest.close()
        if self.best is not None:
            self.best.close()


def check_base(meta: dict, bases: dict[str, dict]) -> None:
    """Fails when a checkpoint was trained on other frozen weights than the ones loaded now."""
    for name, ref in (meta.get("bases") or {}).items():
        now = bases.get(name)
        if now is None:
            continue
        if ref.get("checksum") and now.get("checksum") and ref["checksum"] != now["checksum"]:
            raise ValueError(
                f"checkpoint was trained on base {name!r} = {ref.get('path')} (checksum "
                f"{ref['checksum'][:12]}), but {now.get('path')} (checksum {now['checksum'][:12]}) is "
                "loaded now; point the config at the original weights or start a new workdir")


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs with the shardings of `tree`'s arrays (restore targets)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
                        tree)


def write_json(path: str, obj: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)


def read_json(path: str) -> Optional[dict]:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)
