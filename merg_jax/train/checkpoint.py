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

import contextlib
import hashlib
import logging
import os
from typing import Any, Callable, Sequence

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)

LATEST_ITEMS = ("params", "opt_state", "data", "meta")
BEST_ITEMS = ("params", "meta")


class BaseMismatch(ValueError):
    """The checkpoint was trained on other frozen weights: an error, never a reason to fall back."""


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
            raise BaseMismatch(
                f"checkpoint was trained on base {name!r} = {ref.get('path')} (checksum "
                f"{ref['checksum'][:12]}), but {now.get('path')} (checksum {now['checksum'][:12]}) is "
                "loaded now; point the config at the original weights or start a new workdir")


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs with the shardings of `tree`'s arrays (restore targets)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
                        tree)


@contextlib.contextmanager
def quiet_orbax(level: int = logging.WARNING):
    """Orbax logs every restore step at INFO through absl; a CLI's stderr should not drown in it."""
    absl_log = logging.getLogger("absl")
    old = absl_log.level
    absl_log.setLevel(max(old, level))
    try:
        yield
    finally:
        absl_log.setLevel(old)


def open_reader(directory: str, *, best: bool = False) -> ocp.CheckpointManager:
    """A read-only manager over checkpoints/ (or best/, ranked as `Checkpointer` saved it)."""
    kw = {}
    if best:  # lowest eval_loss is best
        kw = dict(best_fn=lambda m: m.get("eval_loss", float("inf")), best_mode="min",
                  keep_checkpoints_without_metrics=True)
    with quiet_orbax(logging.ERROR):  # also its "directory is read only" notices
        opts = ocp.CheckpointManagerOptions(read_only=True, create=False, enable_async_checkpointing=False, **kw)
        return ocp.CheckpointManager(directory, options=opts, item_names=BEST_ITEMS if best else LATEST_ITEMS)


def read_meta(mngr: ocp.CheckpointManager, step: int) -> dict:
    with quiet_orbax():
        return dict(mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])


def candidate_steps(mngr: ocp.CheckpointManager, *, best: bool = False) -> list[int]:
    """Newest first; for a best/ manager the best step first, then the others newest first."""
    steps = sorted(mngr.all_steps(), reverse=True)
    if not best:
        return steps
    top = mngr.best_step()
    return ([top] if top is not None else []) + [s for s in steps if s != top]


def restore_newest(mngr: ocp.CheckpointManager, restore: Callable[[int, dict], Any], *,
                   steps: Sequence[int], bases: dict[str, dict], where: str, exact: bool = False,
                   none_if_all_fail: bool = False) -> tuple[int, dict, Any] | None:
    """The one "newest good checkpoint" loop: (step, meta, restore(step, meta)) of the first of
    `steps` whose meta reads and whose `restore` succeeds, or None when `steps` is empty.

    A checkpoint that does not read or restore is skipped with a warning for the one before
    it; one trained on other base weights raises `BaseMismatch` at once.  `exact` (a step the
    user asked for): its failure is raised, with no fallback.  When every one fails, a
    ValueError lists them, or with `none_if_all_fail` (resume: start over) None is returned.
    """
    errors = []
    for step in steps:
        try:
            meta = read_meta(mngr, step)
        except Exception as e:
            if exact:
                raise
            log.warning("checkpoint %d in %s has no readable meta (%s: %s); trying the one before",
                        step, where, type(e).__name__, e)
            errors.append((step, e))
            continue
        check_base(meta, bases)
        try:
            with quiet_orbax():
                out = restore(step, meta)
        except BaseMismatch:
            raise
        except Exception as e:
            if exact:
                raise
            log.warning("checkpoint %d in %s could not be restored (%s: %s); trying the one before",
                        step, where, type(e).__name__, str(e)[:300])
            errors.append((step, e))
            continue
        return step, meta, out
    if errors and not none_if_all_fail:
        tried = ", ".join(f"{s} ({type(e).__name__}: {str(e)[:120]})" for s, e in errors)
        raise ValueError(f"no checkpoint in {where} could be restored; tried {tried}")
    return None
