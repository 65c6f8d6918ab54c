"""The early-fusion paper's (MELD report) text-only baselines: dialogue history -> next
empathetic line, LoRA on an LLM.  Two of its Table 3 rows: "Baseline (text only)" (the
instruct model as loaded, no training) and "Fine-tuned Baseline (text only)".

    python launch/train.py --config=configs/text_baseline.py[:preset] --workdir=DIR

Presets:
  smoke                  SmolLM2-135M-Instruct (installed with the project) on the synthetic corpus,
                         emotion + response target (`text_response`, ours; bench/learning_signal.py)
  llama3_8b              Llama-3-8B-Instruct fine-tuned on Listing 1, LoRA r 8, alpha 16, dropout 0.1
  mistral_7b             Mistral-7B-Instruct-v0.3, the same
  finetuned_<backbone>   Table 3's fine-tuned text-only row: `finetuned_smoke` is smoke with the
                         paper's Listing 1 prompt and target; `finetuned_llama3_8b` /
                         `finetuned_mistral_7b` are llama3_8b / mistral_7b
  pretrained_<backbone>  Table 3's pretrained text-only row (smoke, llama3_8b, mistral_7b): the same
                         config with a stage of 0 steps (steps = epochs = 0).  launch/train.py trains
                         nothing, says so, and writes config.json and checkpoint step 0 (LoRA B is 0,
                         so the LLM computes exactly the loaded weights); launch/evaluate.py then
                         scores the model as loaded
The 7B/8B presets need --config.model.path=/local/weights (no downloads at run time).
bench/meld_table.py lists the train/evaluate commands of every row.

The paper's values: Llama-3-8B-Instruct and Mistral-7B-Instruct-v0.3; LoRA r 8, alpha 16,
dropout 0.1; the prompt of Listing 1 (template `listing1`) with the bare next line as target;
no training at all for the pretrained row.
Ours (the paper does not give them, or we differ): LoRA on the attention projections
q/k/v/o; bfloat16 weights instead of its 4-bit QLoRA (no NF4 base yet); learning rate 2e-4,
3 epochs, batch 32, sequence buckets 512-2048, remat; no chat template around Listing 1;
at smoke scale SmolLM2-135M-Instruct, batch 8, learning rate 1e-3 on the synthetic corpus.
"""
from __future__ import annotations

import ml_collections

from configs.common import base_config, model_defaults, pipeline_defaults, select_preset, stage, synthetic_defaults

# The early-fusion paper's (MELD report) LoRA: rank 8, alpha 16, dropout 0.1, attention projections.
EARLY_FUSION_LORA = dict(rank=8, alpha=16.0, dropout=0.1, targets=("q_proj", "k_proj", "v_proj", "o_proj"))


def _common() -> ml_collections.ConfigDict:
    c = base_config()
    c.system = "text_baseline"
    c.model = model_defaults(lora=ml_collections.ConfigDict(EARLY_FUSION_LORA))
    c.data = pipeline_defaults()
    c.data.data_dir = "data/synthetic-features"
    # input_pipeline.prompts.TEMPLATES name: emotion + response (ours); the paper presets use
    # 'listing1', the early-fusion paper's wording verbatim
    c.data.template = "text_response"
    c.data.max_utterances = 8
    c.data.synthetic = synthetic_defaults()
    c.data.train_split = "train"
    c.data.eval_split = "valid"
    c.stages = ml_collections.ConfigDict({"sft": stage("sft", trainable=(r".*lora_[ab]",), epochs=3)})
    c.stage_order = ("sft",)
    return c


def smoke() -> ml_collections.ConfigDict:
    c = _common()
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
    c.data.template = "listing1"  # the early-fusion paper's Listing 1, text only
    c.optimizer.learning_rate = 2e-4
    c.checkpoint.every_steps = 500
    return c


def listing1_smoke() -> ml_collections.ConfigDict:
    """smoke with the paper's prompt and target (Listing 1, the bare next line)."""
    c = smoke()
    c.data.template = "listing1"
    return c


def untrained(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`c` with its one stage at 0 steps: the model as loaded (Table 3's pretrained rows)."""
    c.stages.sft.steps = 0
    c.stages.sft.epochs = 0
    return c


PRESETS = {
    "smoke": smoke,
    "llama3_8b": lambda: _paper("Meta-Llama-3-8B-Instruct"),
    "mistral_7b": lambda: _paper("Mistral-7B-Instruct-v0.3"),
    # the early-fusion paper's Table 3 rows (bench/meld_table.py)
    "finetuned_smoke": listing1_smoke,
    "finetuned_llama3_8b": lambda: _paper("Meta-Llama-3-8B-Instruct"),
    "finetuned_mistral_7b": lambda: _paper("Mistral-7B-Instruct-v0.3"),
    "pretrained_smoke": lambda: untrained(listing1_smoke()),
    "pretrained_llama3_8b": lambda: untrained(_paper("Meta-Llama-3-8B-Instruct")),
    "pretrained_mistral_7b": lambda: untrained(_paper("Mistral-7B-Instruct-v0.3")),
}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    name, build = select_preset(PRESETS, preset, "smoke")
    c = build()
    c.preset = name
    return c
