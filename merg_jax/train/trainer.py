"""The training loop: stages in order, exact resume, checkpoints, metrics, NaN guard, SIGTERM.

One optimizer step is one jitted function of (trainable params, optimizer state,
frozen state, batch, key, stage step).  Params and optimizer state are donated
and pinned to their shardings; the frozen part of the model is an argument, not a
closure, so XLA never embeds weights as constants.  The dropout key is
`fold_in(seed, global step)`, and the Grain iterator state is checkpointed, so a
resumed run replays exactly the batches and randomness it would have seen.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from merg_jax.core import sharding as shd
from merg_jax.core.console import Progress
from merg_jax.core.io import write_json
from merg_jax.train import checkpoint as ckpt_lib
from merg_jax.train import data as data_lib
from merg_jax.train import distributed, optim, partition
from merg_jax.train.config import validate
from merg_jax.train.metrics import Averager, make_writer, peak_flops

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """Loss or gradient norm became NaN/Inf; the last good checkpoint is left intact."""


@dataclasses.dataclass
class StageRun:
    index: int
    name: str
    cfg: ml_collections.ConfigDict
    steps: int
    graphdef: Any
    template: nnx.State
    rest: nnx.State
    params: dict
    tx: optax.GradientTransformation
    sched: optax.Schedule
    opt_state: Any
    iterator: Any
    data_cfg: ml_collections.ConfigDict


def _mesh(config) -> jax.sharding.Mesh:
    m = config.mesh
    try:
        return shd.make_mesh(m.data, m.fsdp, m.tensor)
    except ValueError as e:
        raise ValueError(f"{e}. Change --config.mesh.data/fsdp/tensor (this run sees {jax.device_count()} "
                         f"devices on {jax.process_count()} process(es))") from None


def _pick(like: dict, src: dict) -> dict:
    """The entries of `src` at the paths of `like`."""
    return {k: _pick(v, src[k]) if isinstance(v, dict) else src[k] for k, v in like.items()}


def _deep_update(base: dict, new: dict) -> dict:
    out = dict(base)
    for k, v in new.items():
        out[k] = _deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class Trainer:
    """Runs `system`'s stages on the mesh of `config` into `workdir` (see the module docstring).

    `system` is an instance of a `merg_jax.systems` class built on the same config; the
    runtime calls its resolve() (config switches -> stages) and validate() before any
    device work, so a wrong config fails in the first second."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, system):
        distributed.initialize(config.get("distributed"))
        self.system = system
        system.resolve()
        validate(config)
        system.validate()
        self.config = config
        self.workdir = os.path.abspath(workdir)
        self.mesh = _mesh(config)
        self.stages = [(n, config.stages[n]) for n in config.stage_order]
        self.is_main = jax.process_index() == 0
        os.makedirs(self.workdir, exist_ok=True)
        self._stop_requested = False

    # -- set-up ---------------------------------------------------------------
    def setup(self) -> None:
        """Data, model, checkpoints (idempotent); errors here are config errors."""
        if not hasattr(self, "model"):
            self._build()

    def _build(self) -> None:
        if self.is_main:
            data_lib.ensure_features(self.config.data)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("data ready")
        with shd.logical_rules(self.config.mesh.rules):
            self.model = self.system.build(self.mesh)
        for name, s in self.stages:
            partition.check_patterns(self.model, s.trainable, f"stages.{name}.trainable")
        self.union = partition.union(s for _, s in self.stages)
        self.bases = self.system.bases()
        c = self.config.checkpoint
        self.ckpt = ckpt_lib.Checkpointer(self.workdir, keep=c.keep, keep_best=c.keep_best,
                                          best_metric="eval_loss" if c.best_by_eval else "",
                                          async_save=c.async_save)
        self.writer = make_writer(os.path.join(self.workdir, "tensorboard"), enabled=self.is_main)
        if self.is_main:
            write_json(os.path.join(self.workdir, "config.json"), self.config.to_dict(), sort_keys=True)
            self.writer.write_hparams({"system": self.config.system, "workdir": self.workdir})

    def _setup_stage(self, index: int) -> StageRun:
        name, s = self.stages[index]
        graphdef, template, rest = partition.split(self.model, s.trainable)
        params = partition.to_params(template, jnp.float32)
        params = jax.tree.map(lambda x, t: jax.device_put(x, t.sharding), params, nnx.to_pure_dict(template))
        data_cfg = self.system.data_config(s, self.config.data.get("train_split", "train"), train=True)
        steps = data_lib.stage_steps(s, data_cfg.data_dir, data_cfg.split, data_cfg.global_batch_size)
        opt_cfg = self.config.optimizer
        tx, sched = optim.make_optimizer(opt_cfg, params, steps, lr=s.get("learning_rate") or None)
        opt_state = optim.init_state(tx, params, self.mesh)
        from input_pipeline.pipeline import make_iterator
        iterator = make_iterator(data_cfg)
        return StageRun(index, name, s, steps, graphdef, template, rest, params, tx, sched, opt_state,
                        iterator, data_cfg)

    def _meta(self, step: int, stage_index: int, stage_step: int) -> dict:
        name = self.stages[stage_index][0] if stage_index < len(self.stages) else "done"
        return {"step": step, "stage_index": stage_index, "stage": name, "stage_step": stage_step,
                "system": self.config.system, "bases": self.bases, "time": time.time(),
                "union": self.union}

    def _union_params(self, run: StageRun | None) -> dict:
        """What a checkpoint stores: every parameter some stage trains, in float32."""
        base = partition.to_params(nnx.state(self.model, partition.matcher(self.union)), jnp.float32)
        return base if run is None else _deep_update(base, run.params)

    def _resume(self) -> tuple[int, int, int, StageRun | None]:
        """(global step, stage index, stage step, stage run with restored state) from the newest
        checkpoint that restores; a corrupt or incomplete one is skipped with a warning."""
        def restore(step: int, meta: dict):
            index, stage_step = int(meta["stage_index"]), int(meta["stage_step"])
            run = None
            if 0 < stage_step and index < len(self.stages):
                # The stage had started, so its preparation finished before: this only
                # re-points the system at the outputs (systems skip work already done).
                self.system.prepare_stage(self.stages[index][1], self.model, self.workdir, self.mesh)
                run = self._setup_stage(index)
            abstract = ckpt_lib.abstract_like(self._union_params(None))
            params, opt_state = self.ckpt.restore(
                step, abstract, abstract_opt_state=None if run is None else ckpt_lib.abstract_like(run.opt_state),
                data_iter=None if run is None else run.iterator)
            return index, stage_step, run, params, opt_state

        found = ckpt_lib.restore_newest(self.ckpt.latest, restore, steps=self.ckpt.steps(), bases=self.bases,
                                        where=os.path.join(self.workdir, "checkpoints"), none_if_all_fail=True)
        if found is None:
            return 0, 0, 0, None
        step, meta, (index, stage_step, run, params, opt_state) = found
        partition.set_params(self.model, self.union, params)
        if run is not None:
            run.params = _pick(run.params, params)
            run.opt_state = opt_state
        log.info("resumed from step %d (stage %s, step %d of the stage) in %s", step, meta["stage"],
                 stage_step, self.workdir)
        return step, index, stage_step, run

    # -- step -----------------------------------------------------------------
    def _make_step(self, run: StageRun, batch: dict):
        system, stage = self.system, run.cfg
        graphdef, template = run.graphdef, run.template
        accum = int(self.config.optimizer.grad_accum)
        inject_nan_at = int(self.config.log.get("inject_nan_at", 0))  # fault injection for tests

        def loss_fn(params, rest, b, key):
            model = partition.merge(graphdef, template, params, rest)
            loss, aux = system.loss(model, b, key, stage, train=True)
            return loss, aux

        def step(params, opt_state, rest, b, key, stage_step):
            grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
            if accum == 1:
                (loss, aux), grads = grad_fn(params, rest, b, key)
            else:
                micro = jax.tree.map(lambda x: x.reshape(accum, x.shape[0] // accum, *x.shape[1:]), b)

                def body(carry, xs):
                    mb, i = xs
                    (l, a), g = grad_fn(params, rest, mb, jax.random.fold_in(key, i))
                    return jax.tree.map(jnp.add, carry, (l, a, g)), None
                zero = jax.tree.map(jnp.zeros_like, jax.eval_shape(
                    lambda: grad_fn(params, rest, jax.tree.map(lambda x: x[0], micro), key)))
                zero = (zero[0][0], zero[0][1], zero[1])
                (loss, aux, grads), _ = jax.lax.scan(body, zero, (micro, jnp.arange(accum)))
                loss, grads = loss / accum, jax.tree.map(lambda g: g / accum, grads)
                aux = {k: v if k in ("tokens", "nll_sum") else v / accum for k, v in aux.items()}
            if inject_nan_at:
                loss = jnp.where(stage_step + 1 == inject_nan_at, jnp.nan, loss)
            gnorm = optax.tree.norm(grads)
            updates, new_opt = run.tx.update(grads, opt_state, params)
            new_params = optax.apply_updates(params, updates)
            ok = jnp.isfinite(loss) & jnp.isfinite(gnorm)
            keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
            metrics = {k: v for k, v in aux.items() if k != "nll_sum"}
            metrics.update(loss=loss, grad_norm=gnorm, learning_rate=run.sched(stage_step), ok=ok,
                           seen_tokens=b["attention_mask"].sum() if "attention_mask" in b else jnp.zeros(()))
            return keep(new_params, params), keep(new_opt, opt_state), metrics

        rep = NamedSharding(self.mesh, PartitionSpec())
        p_sh = jax.tree.map(lambda x: x.sharding, run.params)
        o_sh = jax.tree.map(lambda x: x.sharding, run.opt_state)
        r_sh = jax.tree.map(lambda x: x.sharding, run.rest)
        b_sh = {k: shd.batch_sharding(self.mesh, np.ndim(v)) for k, v in batch.items()}
        return jax.jit(step, in_shardings=(p_sh, o_sh, r_sh, b_sh, rep, rep), out_shardings=(p_sh, o_sh, rep),
                       donate_argnums=(0, 1))

    def _make_eval(self, run: StageRun):
        system, stage = self.system, run.cfg

        @jax.jit
        def evaluate(params, rest, b):
            model = partition.merge(run.graphdef, run.template, params, rest)
            _, aux = system.loss(model, b, None, stage, train=False)
            return aux["nll_sum"], aux["tokens"]
        return evaluate

    # -- loop -----------------------------------------------------------------
    def _on_sigterm(self, signum, frame):
        log.warning("SIGTERM received: saving a checkpoint after the current step, then exiting")
        self._stop_requested = True

    def _should_stop(self) -> bool:
        flag = self._stop_requested
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            flag = bool(np.any(multihost_utils.process_allgather(np.asarray([flag]))))
        return flag

    def _save(self, step: int, run: StageRun, stage_step: int, *, boundary: bool = False) -> None:
        if boundary:
            self.ckpt.save(step, self._union_params(None), self._meta(step, run.index + 1, 0), force=True)
        else:
            self.ckpt.save(step, self._union_params(run), self._meta(step, run.index, stage_step),
                           opt_state=run.opt_state, data_iter=run.iterator, force=True)

    def _eval(self, run: StageRun, evaluate, step: int) -> float | None:
        c = self.config.log
        try:
            cfg = self.system.data_config(run.cfg, self.config.data.get("eval_split", "valid"), train=False)
            data_lib.split_size(cfg.data_dir, cfg.split)
        except ValueError as e:
            log.info("no evaluation for stage %s: %s", run.name, e)
            return None
        from input_pipeline.pipeline import make_iterator, to_global
        nll = tokens = 0.0
        for i, batch in enumerate(make_iterator(cfg)):
            if c.eval_batches and i >= c.eval_batches:
                break
            with jax.set_mesh(self.mesh):
                n, t = evaluate(run.params, run.rest, to_global(batch, self.mesh))
            nll, tokens = nll + float(n), tokens + float(t)
        loss = nll / max(tokens, 1.0)
        name = self.system.loss_name(run.cfg)  # "lm_nll" for a language-model loss
        scalars = {f"{run.name}/eval_loss": loss, f"{run.name}/eval_{name}": loss}
        if name == "lm_nll":  # a perplexity only where the loss is a token NLL
            scalars[f"{run.name}/eval_ppl"] = math.exp(min(loss, 50))
        self.writer.write_scalars(step, scalars)
        log.info("[%s] step %d eval %s=%.4f (%d %s)", run.name, step, name, loss, tokens,
                 "tokens" if name == "lm_nll" else "rows")
        return loss

    def train(self) -> dict:
        """Runs every remaining stage; returns a summary (last metrics per stage)."""
        self.setup()
        step, start_index, resumed_step, resumed = self._resume()
        old = signal.signal(signal.SIGTERM, self._on_sigterm) if _main_thread() else None
        summary: dict[str, Any] = {"workdir": self.workdir, "stages": {}}
        try:
            for index in range(start_index, len(self.stages)):
                run = resumed if resumed is not None and resumed.index == index else None
                stage_step = resumed_step if run is not None else 0
                if run is None and data_lib.untrained(self.stages[index][1]):
                    summary["stages"][self.stages[index][0]] = self._skip_stage(index, step)
                    continue
                if run is None:
                    name = self.stages[index][0]
                    log.info("stage %s: preparing", name)
                    self.system.prepare_stage(self.stages[index][1], self.model, self.workdir, self.mesh)
                    run = self._setup_stage(index)
                status, step, last = self._run_stage(run, step, stage_step)
                summary["stages"][run.name] = last
                if status == "stopped":
                    summary["status"] = "preempted"
                    return summary
            summary["status"] = "done"
            summary["step"] = step
            return summary
        finally:
            self.ckpt.close()
            self.writer.close()  # stops tensorboardX's writer threads; a later write reopens
            if old is not None:
                signal.signal(signal.SIGTERM, old)

    def _run_stage(self, run: StageRun, step: int, stage_step: int) -> tuple[str, int, dict]:
        c = self.config
        log.info("stage %s: %d steps (from %d), trainable %s", run.name, run.steps, stage_step, run.cfg.trainable)
        if self.is_main and stage_step == 0:
            from clu import parameter_overview
            log.info("trainable parameters of stage %s:\n%s", run.name,
                     parameter_overview.get_parameter_overview(run.params, include_stats=False))
        from input_pipeline.pipeline import to_global
        key0 = jax.random.key(int(c.seed))
        step_fn = evaluate = None
        progress = Progress(run.name, run.steps, start=stage_step, every=c.log.every_steps,
                            bar_keys=("loss", "tokens_per_s"), enabled=self.is_main)
        self._averager = Averager()
        pending = None  # (global step, stage step, metrics, analytic FLOPs) of the last dispatched step
        last: dict = {}
        flops_by_shape: dict[tuple, float] = {}  # one per sequence bucket
        peak = peak_flops(jax.devices()[0], c.log.peak_flops)
        t_last = time.perf_counter()

        def finish(prev) -> dict:
            nonlocal t_last
            gstep, sstep, m, flops = prev
            m = jax.device_get(m)
            if not bool(m["ok"]):
                good = [s for s in self.ckpt.steps() if s < gstep]
                self.ckpt.wait()
                raise TrainingDiverged(
                    f"loss={float(m['loss'])} grad_norm={float(m['grad_norm'])} at step {gstep} (stage {run.name}): "
                    f"training stopped. The update was not applied and nothing was saved after it; "
                    f"the last good checkpoint is step {good[0] if good else 'none'} in {self.workdir}/checkpoints. "
                    "Lower optimizer.learning_rate, check the data, or set model.dtype=float32")
            now = time.perf_counter()
            dt, t_last = now - t_last, now
            out = {k: float(v) for k, v in m.items() if k != "ok"}
            out["step_time"] = dt
            out["tokens_per_s"] = out.pop("seen_tokens") / dt
            if flops and peak:
                out["mfu"] = flops / dt / (peak * jax.device_count())
            return out

        while stage_step < run.steps:
            batch = next(run.iterator)
            gbatch = to_global(batch, self.mesh)
            if step_fn is None:
                step_fn = self._make_step(run, gbatch)
            shape = tuple(batch["input_ids"].shape)
            if shape not in flops_by_shape:
                flops_by_shape[shape] = self.system.step_flops(self.model, shape, run.cfg) * jax.process_count()
            key = jax.random.fold_in(key0, step)
            with jax.set_mesh(self.mesh):  # the models' logical sharding constraints resolve against it
                run.params, run.opt_state, metrics = step_fn(run.params, run.opt_state, run.rest, gbatch, key,
                                                             jnp.asarray(stage_step, jnp.int32))
            step, stage_step = step + 1, stage_step + 1
            if pending is not None:
                last = finish(pending)
                self._report(run, pending[0], pending[1], last, progress)
            pending = (step, stage_step, metrics, flops_by_shape[shape])
            # The stage's last step is saved by the boundary checkpoint below.
            save_now = c.checkpoint.every_steps and step % c.checkpoint.every_steps == 0 \
                and stage_step < run.steps
            stop = self._should_stop() and stage_step < run.steps
            if save_now or stop:
                last = finish(pending)
                self._report(run, step, stage_step, last, progress)
                pending = None
                self._save(step, run, stage_step)
                if stop:
                    self.ckpt.wait()
                    progress.close()
                    log.warning("saved step %d to %s/checkpoints; exiting on SIGTERM", step, self.workdir)
                    return "stopped", step, last
            if c.log.eval_every and stage_step % c.log.eval_every == 0 and stage_step < run.steps:
                evaluate = evaluate or self._make_eval(run)
                loss = self._eval(run, evaluate, step)
                if loss is not None:
                    self._save_best(run, step, loss)
        if pending is not None:
            last = finish(pending)
            self._report(run, pending[0], pending[1], last, progress, force=True)
        progress.close()
        if c.log.eval_every or c.checkpoint.best_by_eval:
            evaluate = evaluate or self._make_eval(run)
            loss = self._eval(run, evaluate, step)
            if loss is not None:
                last["eval_loss"] = loss
                self._save_best(run, step, loss)
        partition.set_params(self.model, run.cfg.trainable, run.params)
        self._save(step, run, stage_step, boundary=True)
        last.update(_compile_count(run.name, step_fn, len(flops_by_shape)))
        return "done", step, last

    def _skip_stage(self, index: int, step: int) -> dict:
        """A stage of 0 steps (steps=0, epochs=0): no optimizer, no data, no preparation; the
        parameters stay as built (as loaded, LoRA B = 0) and are saved as checkpoint `step`
        (step 0 for a first stage), so the workdir evaluates and exports like a trained one.
        When an earlier stage already saved this step, its parameters are the same: nothing to save."""
        name = self.stages[index][0]
        log.warning("stage %s has 0 steps (steps=0, epochs=0): nothing trains; the model as loaded is "
                    "checkpoint step %d of %s", name, step, self.workdir)
        if step not in self.ckpt.steps():
            self.ckpt.save(step, self._union_params(None), self._meta(step, index + 1, 0), force=True)
        return {"steps": 0, "untrained": True}

    def _save_best(self, run: StageRun, step: int, loss: float) -> None:
        # Losses of different stages are not comparable: best/ ranks the final stage only.
        if self.ckpt.best is None or run.index != len(self.stages) - 1:
            return
        self.ckpt.save_best(step, self._union_params(run), self._meta(step, run.index, -1),
                            {"eval_loss": loss, "stage": run.index})

    def _report(self, run: StageRun, step: int, stage_step: int, m: dict, progress: Progress,
                force: bool = False) -> None:
        self.writer.write_scalars(step, {f"{run.name}/{k}": v for k, v in m.items()})
        self._averager.add(m)
        if force or progress.due(stage_step):
            m = {**m, **self._averager.pop()}  # loss, accuracy, grad norm: mean since the last line
        progress.update(stage_step, {k: m[k] for k in _SHOWN if k in m}, force=force)


_SHOWN = ("loss", "token_accuracy", "profile_accuracy", "grad_norm", "learning_rate", "tokens_per_s", "mfu")


def _compile_count(stage: str, step_fn, n_shapes: int) -> dict:
    """How often the step compiled; once per batch shape is right.  More means an input's
    type or placement changes between steps, and each such compile can take minutes."""
    size = getattr(step_fn, "_cache_size", None)  # jax's jitted functions; not public API
    if size is None:
        return {}
    n = size()
    if n > n_shapes:
        log.warning("stage %s: the train step compiled %d times for %d batch shapes; an input's "
                    "dtype, weak type or sharding changes between steps", stage, n, n_shapes)
    return {"step_compiles": n, "batch_shapes": n_shapes}


def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()
