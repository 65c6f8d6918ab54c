"""LoRA train-step throughput: merg-jax's training step vs transformers + peft (PyTorch).

    python bench/train_step.py [--batch=4] [--seq=256] [--rank=8] [--warmup=3] [--steps=10]
                               [--dtype=float32|bfloat16] [--model=PATH]
    python bench/train_step.py --random_8b [--batch=4] [--seq=2048]     # GPU session, ours only
    python bench/train_step.py --random_8b --tiny_for_test              # CPU smoke test of that path

Both sides train the same model (SmolLM2-135M-Instruct from the project's GGUF,
dequantised by each side's own loader) with LoRA on q/k/v/o at the same rank,
alpha and dropout 0, on the same random batch: full attention, next-token loss on
the second half of each row, AdamW with clipping at 1.0.

Ours is the runtime's real step: `Trainer._make_step` (jitted value_and_grad of
the system's loss, optax update, NaN guard, donated params/opt state) on a
`TextBaseline` model split into trainable LoRA params and frozen rest exactly as
`Trainer._setup_stage` does (so ours also runs its cosine schedule; torch keeps
a constant lr: the losses after step 1 differ, the first-step losses match).
Torch is `peft.get_peft_model` + `torch.optim.AdamW`.  Each timed step is blocked
on (`jax.block_until_ready`; torch on CPU is synchronous); after the warm-up the
two sides alternate step by step, so load from other work on a shared machine
falls on both alike.  Compilation falls in the first warm-up step.  tokens/s = B*L /
median step time.  FLOP/s is analytic (`systems.common.llm_step_flops`: 4N per
token for a frozen base, plus attention), for information; MFU is shown where
the device's peak is known (`train.metrics.peak_flops`).

On a CPU shared with other processes, torch's OpenMP threads (`--torch_threads`,
default all cores) slow down badly when the cores are oversubscribed; compare
with `--torch_threads=1` (and `taskset`) before trusting a ratio from a busy box.
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


# --------------------------------------------------------------------------- ours

def _batch(vocab: int, b: int, l: int, seed: int):
    """Random ids, full attention, loss on the second half (targets = next id)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, size=(b, l + 1), dtype=np.int64)
    loss_mask = np.zeros((b, l), np.int32)
    loss_mask[:, l // 2:] = 1
    return {"input_ids": ids[:, :-1].astype(np.int32), "targets": ids[:, 1:].astype(np.int32),
            "loss_mask": loss_mask, "attention_mask": np.ones((b, l), np.int32),
            "positions": np.broadcast_to(np.arange(l, dtype=np.int32), (b, l)).copy()}


def _runtime_step(llm, mesh, batch_np: dict, total_steps: int, grad_accum: int = 1):
    """The Trainer's jitted step for a TextBaseline stage training `.*lora_[ab]`.

    Returns (step_fn, params, opt_state, rest, global batch, model).  The set-up
    mirrors `Trainer._setup_stage`; the step itself is `Trainer._make_step`.
    """
    import jax
    import jax.numpy as jnp
    import ml_collections
    from flax import nnx

    from configs.common import optimizer_defaults
    from merg_jax.core import sharding as shd
    from merg_jax.systems.text_baseline import TextBaseline, TextModel
    from merg_jax.train import optim, partition
    from merg_jax.train.trainer import StageRun, Trainer

    config = ml_collections.ConfigDict()
    config.optimizer = optimizer_defaults()
    config.optimizer.grad_accum = grad_accum
    config.log = ml_collections.ConfigDict({"every_steps": 0})
    stage = ml_collections.ConfigDict({"trainable": (r".*lora_[ab]",)})

    model = TextModel(llm)
    partition.check_patterns(model, stage.trainable, "bench trainable")
    graphdef, template, rest = partition.split(model, stage.trainable)
    params = partition.to_params(template, jnp.float32)
    params = jax.tree.map(lambda x, t: jax.device_put(x, t.sharding), params, nnx.to_pure_dict(template))
    tx, sched = optim.make_optimizer(config.optimizer, params, total_steps)
    opt_state = optim.init_state(tx, params, mesh)
    run = StageRun(0, "bench", stage, total_steps, graphdef, template, rest, params, tx, sched, opt_state,
                   None, None)

    trainer = Trainer.__new__(Trainer)  # only what _make_step reads: system, config, mesh
    trainer.config, trainer.mesh = config, mesh
    trainer.system = TextBaseline(config)
    gbatch = shd.global_batch(batch_np, mesh)
    step_fn = trainer._make_step(run, gbatch)
    return step_fn, run.params, run.opt_state, run.rest, gbatch, model


class OursStepper:
    """Calls the runtime's step, blocking on its outputs; one call = one timed step."""

    def __init__(self, step_fn, params, opt_state, rest, gbatch):
        import jax
        self.step_fn, self.params, self.opt_state, self.rest, self.gbatch = step_fn, params, opt_state, rest, gbatch
        self.key0, self.i, self.metrics = jax.random.key(0), 0, None

    def __call__(self) -> float:
        import jax
        import jax.numpy as jnp
        t0 = time.perf_counter()
        self.params, self.opt_state, self.metrics = self.step_fn(
            self.params, self.opt_state, self.rest, self.gbatch, jax.random.fold_in(self.key0, self.i),
            jnp.asarray(self.i, jnp.int32))
        jax.block_until_ready((self.params, self.opt_state, self.metrics))
        if self.i == 0:
            self.first_loss = float(self.metrics["loss"])
        self.i += 1
        return time.perf_counter() - t0

    def summary(self) -> dict:
        import jax
        out = {k: float(v) for k, v in jax.device_get(self.metrics).items()}
        out["first_loss"] = self.first_loss
        out["trainable"] = sum(x.size for x in jax.tree.leaves(self.params))
        return out


class TorchStepper:
    """transformers + peft LoRA on the same model and batch; forward, CE, backward, clip, AdamW."""

    def __init__(self, path: str, dtype: str, batch_np: dict, rank: int, alpha: float, threads: int):
        import torch
        import transformers
        from peft import LoraConfig, get_peft_model

        torch.set_num_threads(threads)
        tdtype = torch.float32 if dtype == "float32" else torch.bfloat16
        if path.endswith(".gguf"):
            ref = transformers.AutoModelForCausalLM.from_pretrained(
                os.path.dirname(path), gguf_file=os.path.basename(path), dtype=tdtype)
        else:
            ref = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=tdtype)
        ref = get_peft_model(ref, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0,
                                             target_modules=list(TARGETS), task_type="CAUSAL_LM"))
        ref.train()
        self.ref = ref
        self.trainable = [p for p in ref.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.trainable, lr=2e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
        self.ids = torch.from_numpy(batch_np["input_ids"]).long()
        self.am = torch.from_numpy(batch_np["attention_mask"]).long()
        self.pos = torch.from_numpy(batch_np["positions"]).long()
        self.tgt = torch.from_numpy(batch_np["targets"]).long()
        self.sel = torch.from_numpy(batch_np["loss_mask"]).bool()
        self.loss = self.first_loss = None

    def __call__(self) -> float:
        import torch
        t0 = time.perf_counter()
        logits = self.ref(input_ids=self.ids, attention_mask=self.am, position_ids=self.pos).logits
        loss = torch.nn.functional.cross_entropy(logits[self.sel].float(), self.tgt[self.sel])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.trainable, 1.0)
        self.opt.step()
        self.loss = float(loss.detach())
        if self.first_loss is None:
            self.first_loss = self.loss
        return time.perf_counter() - t0

    def summary(self) -> dict:
        import torch
        return {"loss": self.loss, "first_loss": self.first_loss, "threads": torch.get_num_threads(),
                "trainable": sum(p.numel() for p in self.trainable)}


def _run(steppers: dict, warmup: int, steps: int) -> dict[str, list[float]]:
    """Warm-up each side, then time them in alternation (one step each per round) so that
    load from other processes on a shared machine falls on both alike."""
    for name, f in steppers.items():
        warm = [f() for _ in range(warmup)]
        print(f"  {name} warm-up steps (s): " + " ".join(f"{t:.2f}" for t in warm), flush=True)
    times: dict[str, list[float]] = {n: [] for n in steppers}
    for _ in range(steps):
        for name, f in steppers.items():
            times[name].append(f())
    for name, ts in times.items():
        print(f"  {name} timed steps (s): " + " ".join(f"{t:.2f}" for t in ts), flush=True)
    return times


# --------------------------------------------------------------------------- report

def _row(name: str, times: list[float], tokens: int, flops: float, peak: float) -> tuple[float, str]:
    med, mean = statistics.median(times), statistics.fmean(times)
    tps = tokens / med
    mfu = f"{100 * flops / med / peak:6.2f}%" if peak else "     -"
    return tps, (f"{name:<22s} {med * 1e3:10.1f} {mean * 1e3:10.1f} {min(times) * 1e3:10.1f} "
                 f"{tps:11.1f} {flops / med / 1e12:9.3f} {mfu:>7s}")


HEADER = (f"{'':<22s} {'median ms':>10s} {'mean ms':>10s} {'min ms':>10s} {'tokens/s':>11s} "
          f"{'TFLOP/s':>9s} {'MFU':>7s}")


def _llama3_8b_config(tiny: bool, dtype: str, remat: str):
    from merg_jax.models.llama import LlamaConfig
    if tiny:  # same family of shapes, small enough for a CPU smoke test
        dims = dict(vocab_size=512, hidden_size=64, intermediate_size=224, num_layers=2, num_heads=4,
                    num_kv_heads=2)
    else:  # Meta-Llama-3-8B
        dims = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32,
                    num_heads=32, num_kv_heads=8)
    return LlamaConfig(**dims, rope_theta=500000.0, rms_norm_eps=1e-5, max_position_embeddings=8192,
                       model_type="llama", bos_token_id=128000, eos_token_id=128001,
                       dtype=dtype, param_dtype=dtype, remat=remat)


def bench_random_8b(args) -> None:
    import jax
    from flax import nnx

    from merg_jax.core import sharding as shd
    from merg_jax.models.layers import LoraConfig
    from merg_jax.systems.base import _random_init
    from merg_jax.systems.common import llm_step_flops
    from merg_jax.train.metrics import peak_flops

    seq = args.seq if args.seq else (64 if args.tiny_for_test else 2048)
    dtype = "bfloat16" if args.dtype == "auto" else args.dtype
    cfg = _llama3_8b_config(args.tiny_for_test, dtype, args.remat)
    lora = LoraConfig(rank=args.rank, alpha=args.alpha, dropout=args.lora_dropout, targets=TARGETS)
    mesh = shd.make_mesh(1, -1, 1)
    t0 = time.perf_counter()
    with shd.logical_rules(shd.LOGICAL_RULES):
        llm = _random_init(cfg, lora, mesh, args.seed)
    n_params = sum(v.get_value().size for _, v in nnx.to_flat_state(nnx.state(llm, nnx.Param)))
    print(f"random {'tiny Llama-3-shaped' if args.tiny_for_test else 'Llama-3-8B-shaped'} model: "
          f"{n_params / 1e9:.3f}B params, {cfg.num_layers} layers, {dtype}, remat {cfg.remat}, "
          f"built in {time.perf_counter() - t0:.1f}s on {jax.devices()[0].device_kind} "
          f"x{jax.device_count()} (mesh {dict(mesh.shape)})", flush=True)
    batch_np = _batch(cfg.vocab_size, args.batch, seq, args.seed)
    step_fn, params, opt_state, rest, gbatch, model = _runtime_step(
        llm, mesh, batch_np, args.warmup + args.steps, args.grad_accum)
    del llm
    tokens = args.batch * seq
    flops = llm_step_flops(model.llm, (args.batch, seq), frozen_base=True)
    peak = peak_flops(jax.devices()[0]) * jax.device_count()
    print(f"batch {args.batch} x seq {seq} = {tokens} tokens/step, LoRA r{args.rank} on {','.join(TARGETS)}, "
          f"{flops / 1e12:.2f} TFLOP/step (analytic), peak {peak / 1e12:.0f} TFLOP/s", flush=True)
    ours = OursStepper(step_fn, params, opt_state, rest, gbatch)
    del params, opt_state
    times = _run({"ours": ours}, args.warmup, args.steps)["ours"]
    m = ours.summary()
    print(HEADER)
    tps, line = _row("merg-jax (runtime)", times, tokens, flops, peak)
    print(line)
    print(f"ours: loss {m['loss']:.4f} grad_norm {m['grad_norm']:.4g} ok {bool(m['ok'])}")
    if args.tiny_for_test:
        assert m["ok"] and m["loss"] > 0, m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=0, help="sequence length (default 256; 2048 with --random_8b)")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--lora_dropout", type=float, default=0.0)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                    help="both sides' weights/activations (auto: float32; bfloat16 with --random_8b)")
    ap.add_argument("--remat", default="", choices=["", "none", "full", "dots"],
                    help="our remat policy (default none; full with --random_8b)")
    ap.add_argument("--grad_accum", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default=None, help="GGUF or HF dir (default: the SmolLM2 wheel)")
    ap.add_argument("--skip_torch", action="store_true")
    ap.add_argument("--torch_threads", type=int, default=0, help="torch intra-op threads (0: os.cpu_count())")
    ap.add_argument("--random_8b", action="store_true",
                    help="ours only: random-initialised Llama-3-8B shapes in bf16, remat full, seq 2048 (GPU)")
    ap.add_argument("--tiny_for_test", action="store_true", help="with --random_8b: a tiny model (CPU check)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.random_8b:
        args.remat = args.remat or "full"
        return bench_random_8b(args)
    if args.tiny_for_test:
        ap.error("--tiny_for_test goes with --random_8b")

    import jax

    from merg_jax.convert.loading import load_pretrained
    from merg_jax.core import assets
    from merg_jax.core import sharding as shd
    from merg_jax.models.layers import LoraConfig
    from merg_jax.systems.common import llm_step_flops
    from merg_jax.train.metrics import peak_flops

    dtype = "float32" if args.dtype == "auto" else args.dtype
    seq = args.seq or 256
    path = args.model or assets.smollm2_gguf()
    mesh = shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    lora = LoraConfig(rank=args.rank, alpha=args.alpha, dropout=args.lora_dropout, targets=TARGETS)
    with shd.logical_rules(shd.LOGICAL_RULES):
        llm, _ = load_pretrained(path, lora=lora, mesh=mesh, with_tokenizer=False, dtype=dtype, param_dtype=dtype,
                            remat=args.remat or "none")
    cfg = llm.config
    batch_np = _batch(cfg.vocab_size, args.batch, seq, args.seed)
    tokens = args.batch * seq
    step_fn, params, opt_state, rest, gbatch, model = _runtime_step(
        llm, mesh, batch_np, args.warmup + args.steps, args.grad_accum)
    del llm
    flops = llm_step_flops(model.llm, (args.batch, seq), frozen_base=True)
    peak = peak_flops(jax.devices()[0])
    import torch
    print(f"model {os.path.basename(path)} ({cfg.num_layers} layers, hidden {cfg.hidden_size}), {dtype}, "
          f"batch {args.batch} x seq {seq} = {tokens} tokens/step, LoRA r{args.rank} alpha {args.alpha:g} "
          f"on {','.join(TARGETS)}, loss on the second half; {args.warmup} warm-up + {args.steps} timed steps")
    print(f"device: jax {jax.devices()[0].platform} x{jax.device_count()} ({os.cpu_count()} CPUs), "
          f"torch threads {args.torch_threads or os.cpu_count()}; analytic {flops / 1e9:.1f} GFLOP/step", flush=True)

    steppers = {"ours": OursStepper(step_fn, params, opt_state, rest, gbatch)}
    del params, opt_state
    if not args.skip_torch:
        steppers["torch"] = TorchStepper(path, dtype, batch_np, args.rank, args.alpha,
                                         args.torch_threads or os.cpu_count())
    times = _run(steppers, args.warmup, args.steps)
    ours_m = steppers["ours"].summary()
    rows = [_row("merg-jax (runtime)", times["ours"], tokens, flops, peak)]
    torch_m = None
    if not args.skip_torch:
        torch_m = steppers["torch"].summary()
        rows.append(_row(f"torch {torch.__version__.split('+')[0]} + peft", times["torch"], tokens, flops, peak))
    print(HEADER)
    for _, line in rows:
        print(line)
    print(f"ours:  loss first step {ours_m['first_loss']:.4f}, last {ours_m['loss']:.4f}; "
          f"{ours_m['trainable']} trainable params")
    if torch_m is not None:
        print(f"torch: loss first step {torch_m['first_loss']:.4f}, last {torch_m['loss']:.4f}; "
              f"{torch_m['trainable']} trainable params")
        print(f"ratio ours/torch = {rows[0][0] / rows[1][0]:.2f}")


if __name__ == "__main__":
    main()
