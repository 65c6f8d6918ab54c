"""The early-fusion paper's (MELD report) ImageBind MLLM: an early-fused audio+video soft prompt
prepended to Listing 1, LoRA on the LLM.  Table 3's "Empathetic MLLM (text + audio + video)" row
(its text-only rows are configs/text_baseline.py:pretrained_* and :finetuned_*).

    python launch/train.py --config=configs/early_fusion.py[:preset] --workdir=DIR
    python launch/evaluate.py --config=configs/early_fusion.py[:preset] --workdir=DIR

One stage `sft` trains the projector, the per-modality maps and the LLM's LoRA
(see merg_jax/systems/early_fusion.py for which part is the paper's and which is ours).

Presets:
  smoke        SmolLM2-135M-Instruct (installed with the project) on the synthetic corpus
  llama3_8b    Llama-3-8B-Instruct, LoRA r 8, alpha 16, dropout 0.1 (the early-fusion paper's)
  mistral_7b   Mistral-7B-Instruct-v0.3, same LoRA
The 7B/8B presets need --config.model.path=/local/weights (no downloads at run time).
bench/meld_table.py lists the train/evaluate commands of every row.

The paper's values: Llama-3-8B-Instruct and Mistral-7B-Instruct-v0.3; LoRA r 8, alpha 16,
dropout 0.1; the audio and video embeddings summed and one trainable linear projector into
the LLM's embedding space, prepended to Listing 1 (template `early_fusion`); a 1024-d joint
space (ImageBind's, `model.fusion_dim`); one projected embedding per slot (K = 1).
Ours: a trained linear map per modality to the joint width (our features are not
ImageBind's), one slot per history utterance, LoRA on q/k/v/o, bfloat16 weights instead of
4-bit QLoRA, learning rate 2e-4, 3 epochs, batch 32, sequence buckets 512-2048, remat; at
smoke scale SmolLM2-135M-Instruct, fusion_dim 256, batch 8, learning rate 1e-3.
"""
from __future__ import annotations

import ml_collections

from configs.common import base_config, model_defaults, pipeline_defaults, select_preset, stage, synthetic_defaults

# The early-fusion paper's (MELD report) LoRA: rank 8, alpha 16, dropout 0.1, attention projections.
EARLY_FUSION_LORA = dict(rank=8, alpha=16.0, dropout=0.1, targets=("q_proj", "k_proj", "v_proj", "o_proj"))
TRAINABLE = (r"projector/.*", r"audio_proj/.*", r"video_proj/.*", r"llm/.*lora_[ab]")


def _common() -> ml_collections.ConfigDict:
    c = base_config()
    c.system = "early_fusion"
    c.model = model_defaults(lora=ml_collections.ConfigDict(EARLY_FUSION_LORA))
    c.model.fusion_dim = 1024  # common audio/video width before the sum (ImageBind's joint width)
    c.data = pipeline_defaults()
    c.data.data_dir = "data/synthetic-features"
    # input_pipeline.prompts.TEMPLATES name: Listing 1 verbatim, one audio_video slot per history utterance
    c.data.template = "early_fusion"
    c.data.soft_tokens_per_slot = 1  # K; 1 = the paper's single projected embedding per slot
    c.data.max_utterances = 8
    c.data.synthetic = synthetic_defaults()
    c.data.train_split = "train"
    c.data.eval_split = "valid"
    c.stages = ml_collections.ConfigDict({"sft": stage("sft", trainable=TRAINABLE, epochs=3)})
    c.stage_order = ("sft",)
    return c


def smoke() -> ml_collections.ConfigDict:
    c = _common()
    c.model.fusion_dim = 256
    c.data.global_batch_size = 8
    c.data.seq_buckets = (256, 384, 512)
    c.optimizer.learning_rate = 1e-3
    c.checkpoint.every_steps = 50
    c.log.every_steps = 5
    return c


def _paper(path_hint: str) -> ml_collections.ConfigDict:
    c = _common()
    c.model.path = ml_collections.config_dict.placeholder(str)  # required: local weights
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "bfloat16"
    c.model.remat = "full"
    c.model.path_hint = path_hint
    c.data.global_batch_size = 32
    c.data.seq_buckets = (512, 1024, 2048)
    c.optimizer.learning_rate = 2e-4
    c.checkpoint.every_steps = 500
    return c


PRESETS = {
    "smoke": smoke,
    "llama3_8b": lambda: _paper("Meta-Llama-3-8B-Instruct"),
    "mistral_7b": lambda: _paper("Mistral-7B-Instruct-v0.3"),
}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    name, build = select_preset(PRESETS, preset, "smoke")
    c = build()
    c.preset = name
    return c
