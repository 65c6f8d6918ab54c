"""Small on-disk fixtures for runtime tests: toy feature shards and a tiny HF Llama.

The toy records follow the extracted-record format (random features, real text),
so the real Grain pipeline and the real SmolLM2 tokenizer run; the tiny Llama has
SmolLM2's vocabulary size so those token ids are valid.
"""
from __future__ import annotations

import json
import os

import numpy as np

DIMS = {"audio": 8, "video": 6, "text": 4}
VOCAB = 49152
_LINES = ["I paid all my bills today, I feel great!", "My dog got sick last night.",
          "I finally finished the marathon.", "My friend forgot my birthday again.",
          "We moved to a new city and I know nobody.", "I got the job I wanted!"]
_EMOTIONS = [("content", "happy", 0), ("sad", "sad", 4), ("proud", "happy", 0), ("angry", "angry", 2),
             ("lonely", "sad", 4), ("excited", "happy", 0)]


def toy_record(i: int, split: str, rng: np.random.Generator) -> dict:
    n = 1 + i % 3
    fine, coarse, label = _EMOTIONS[i % len(_EMOTIONS)]
    return {
        "example_id": f"synthetic/{split}/c{i:04d}/t{n}", "dataset": "synthetic", "split": split,
        "conversation_id": f"c{i:04d}", "turn_id": str(n),
        "history_roles": ["speaker" if j % 2 == 0 else "listener" for j in range(n)],
        "history_texts": [_LINES[(i + j) % len(_LINES)] for j in range(n)],
        "history_indices": list(range(n)),
        "response": f"That sounds like a lot, tell me more ({i}).", "response_role": "listener",
        "emotion": fine, "emotion_coarse": coarse, "label": label,
        "chain_of_empathy": {"speaker_emotion": fine, "event_scenario": "An event.",
                             "emotion_cause": "A cause.", "goal_to_response": "Support."},
        "topic": "Life Events", "sentiment": "", "speaker_profile": {}, "listener_profile": {},
        "features": {m: rng.standard_normal((n, d)).astype(np.float32) for m, d in DIMS.items()},
        "feature_mask": {m: np.ones(n, bool) for m in DIMS},
    }


def write_toy_data(out_dir: str, sizes: dict[str, int] | None = None, seed: int = 0) -> str:
    from array_record.python.array_record_module import ArrayRecordWriter

    from input_pipeline import records
    sizes = sizes or {"train": 48, "valid": 8}
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    splits = {}
    for split, n in sizes.items():
        w = ArrayRecordWriter(os.path.join(out_dir, f"{split}-00000-of-00001.array_record"), "group_size:1")
        for i in range(n):
            w.write(records.encode(toy_record(i, split, rng)))
        w.close()
        splits[split] = {"num_examples": n}
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump({"splits": splits, "feature_dims": DIMS}, f)
    return out_dir


def write_tiny_llama(out_dir: str, seed: int = 0, init_range: float = 0.02) -> str:
    """`init_range`: the weights' std (HF's initializer_range); a large one makes greedy decoding
    depend strongly on the prompt, so decode comparisons cannot pass by emitting one token."""
    import torch
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                                   tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
                                   initializer_range=init_range)
    transformers.LlamaForCausalLM(cfg).save_pretrained(out_dir, safe_serialization=True)
    return out_dir
