"""Validation of the input-pipeline config (defaults: configs.common.pipeline_defaults).

Validation runs when a pipeline is built, so a wrong value fails at start-up
with a message saying which field to change, not hours later inside a worker.
"""
from __future__ import annotations

import glob
import os

import ml_collections

from input_pipeline import prompts


def shard_files(data_dir: str, split: str) -> list[str]:
    """Sorted shard paths of a split."""
    return sorted(glob.glob(os.path.join(data_dir, f"{split}-*-of-*.array_record")))


def validate(c: ml_collections.ConfigDict, process_count: int, *, have_source: bool = False) -> None:
    """Raises ValueError naming the field to change."""
    def bad(msg: str):
        raise ValueError(f"input pipeline config: {msg}")

    if c.template not in prompts.TEMPLATES:
        bad(f"template={c.template!r} is unknown; use one of {sorted(prompts.TEMPLATES)}")
    if not isinstance(c.global_batch_size, int) or c.global_batch_size <= 0:
        bad(f"global_batch_size={c.global_batch_size!r} must be a positive int")
    if process_count <= 0:
        bad(f"process_count={process_count} must be positive")
    if c.global_batch_size % process_count:
        bad(f"global_batch_size={c.global_batch_size} is not divisible by the {process_count} "
            "processes; make it a multiple of the process count")
    buckets = tuple(c.seq_buckets or ())
    if not buckets or any(not isinstance(b, int) or b < 2 for b in buckets):
        bad(f"seq_buckets={buckets} must be a non-empty list of ints >= 2")
    if list(buckets) != sorted(set(buckets)):
        bad(f"seq_buckets={buckets} must be strictly increasing, e.g. (128, 256, 512)")
    for name in ("max_utterances", "soft_tokens_per_slot", "pack_max_examples"):
        if not isinstance(c[name], int) or c[name] < 1:
            bad(f"{name}={c[name]!r} must be an int >= 1")
    for name in ("worker_count", "read_threads", "prefetch_buffer_size", "worker_buffer_size"):
        if not isinstance(c[name], int) or c[name] < 0:
            bad(f"{name}={c[name]!r} must be an int >= 0")
    if c.worker_buffer_size < 1 and c.worker_count > 0:
        bad("worker_buffer_size must be >= 1 when worker_count > 0")
    if c.num_epochs is not None and (not isinstance(c.num_epochs, int) or c.num_epochs < 1):
        bad(f"num_epochs={c.num_epochs!r} must be None (repeat forever) or an int >= 1")
    if not 0 <= c.seed < 2 ** 32:
        bad(f"seed={c.seed} must be in [0, 2**32)")
    if c.soft_modalities is not None:
        unknown = set(c.soft_modalities) - set(prompts.MODALITY_IDS)
        if unknown:
            bad(f"soft_modalities has unknown {sorted(unknown)}; use {sorted(prompts.MODALITY_IDS)}")
    if c.system_prompt and not c.chat_template:
        bad("system_prompt is only used with chat_template=True; set chat_template or drop it")
    if c.get("prompt_mode", "train") not in prompts.PROMPT_MODES:
        bad(f"prompt_mode={c.prompt_mode!r}; use one of {prompts.PROMPT_MODES}")
    if c.get("chain_source", "gold") not in prompts.CHAIN_SOURCES:
        bad(f"chain_source={c.chain_source!r}; use one of {prompts.CHAIN_SOURCES}")
    if c.packing and not c.include_target:
        bad("packing is for training; set packing=False when include_target=False")
    if c.tokenizer_path and not os.path.exists(c.tokenizer_path):
        bad(f"tokenizer_path={c.tokenizer_path!r} does not exist")
    if not have_source:
        if not c.data_dir or not os.path.isdir(c.data_dir):
            bad(f"data_dir={c.data_dir!r} is not a directory")
        if not shard_files(c.data_dir, c.split):
            bad(f"no '{c.split}-*-of-*.array_record' shards in {c.data_dir}; check split/data_dir")
