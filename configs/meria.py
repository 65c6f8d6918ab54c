"""The MERIA paper's system: PDR -> UGF -> soft prompts -> M-CoE LLM -> Response LLM, in three stages.

    python launch/train.py --config=configs/meria.py[:preset] --workdir=DIR

Stages (one module tree; each stage trains a subset selected by path regexes):
  pdr       PDR alone on the extracted features (eq. 1-5, `pdr_losses`)
  mcoe      PDR frozen; soft-prompt projectors + M-CoE LLM LoRA, LM loss on the `mcoe`
            template (five dialogue-level signal slots, K = data.soft_tokens_per_slot each)
  response  Response LLM LoRA on `mcoe_response`, whose chain of empathy is the M-CoE
            LLM's greedy output written by the stage's prepare step (response_mcoe=
            "generated", the paper's stage 3, the default) or the gold rendering
            (response_mcoe="gold", an ablation; the smoke preset's shortcut)

Ablations (resolved by `merg_jax.systems.meria.resolve_stages` at start-up, so command
line overrides work):
  use_pdr=False   no PDR: a per-modality linear map ("adapter/") turns each modality's
                  features into the S/P(/I) latent layout (log-variance 0, so UGF is a
                  plain mean); it trains with the projectors; stage `pdr` is dropped
  use_ugf=False   Z_S^F is the plain mean over present modalities (paper "w/o UGF")
  use_mcoe=False  no M-CoE stage: the Response LLM gets the five soft-token slots + the
                  dialogue directly (template `meria_direct`); projectors train with its LoRA

Presets:
  smoke        SmolLM2-135M-Instruct (model path "") for both LLMs on the synthetic corpus
               (~200 dialogues); all three stages + evaluation sized for 2 CPU cores; its
               stage 3 trains on GOLD chains (off-paper, to stay in its time budget)
  signal       smoke trained longer (PDR 600, M-CoE 150, Response 60 steps), stage 3 on
               generated chains: the learning-signal measurements of the README
  qwen3_0p6b   Qwen3-0.6B, LoRA r 16, alpha 32, lr 2e-4, 4 epochs per LLM stage
  qwen3_8b     Qwen3-8B, same
  qwen3_32b    Qwen3-32B (the paper's backbone), same
The Qwen presets need --config.mcoe_model.path=... and --config.response_model.path=...
(local HF directories or .gguf files; no downloads at run time).

Blocks (the shared ones are documented field by field in configs/common.py):
  seed, mesh, optimizer, checkpoint, log, distributed   common.base_config
  mcoe_model, response_model   one LLM each (common.model_defaults): path, init, dtype,
                               param_dtype, remat, lora (MERIA_LORA below)
  pdr          PDR sizes and loss weights (pdr_defaults below)
  projector    soft-prompt projectors: hidden_dim
  use_pdr, use_ugf, use_mcoe, response_mcoe   ablations and stage 3's chain of empathy
  fusion       agreement_temperature: our agreement-weighted pooling over utterances (off)
  generation   greedy M-CoE generation before the response stage (generation_defaults below)
  data         the input pipeline (common.pipeline_defaults) + data.synthetic
               (common.synthetic_defaults); stages override it per stage through stage.data
  stages, stage_order   common.stage: trainable regexes, steps/epochs, data, learning_rate
"Paper" below is the MERIA paper; "ours" marks a value the paper does not give.
"""
from __future__ import annotations

import ml_collections

from configs.common import base_config, model_defaults, pipeline_defaults, select_preset, stage, synthetic_defaults

# The LoRA of both LLMs in every preset (formerly PAPER_LORA: rank and alpha as the MERIA
# paper's); dropout 0.05 and the attention-projection targets are not marked as the paper's.
MERIA_LORA = dict(rank=16, alpha=32.0, dropout=0.05, targets=("q_proj", "k_proj", "v_proj", "o_proj"))


def pdr_defaults() -> ml_collections.ConfigDict:
    """merg_jax.models.pdr.PDRConfig fields (feature_dims come from the data's manifest).

    The paper gives the architecture but no sizes or loss weights: every value is ours.
    """
    c = ml_collections.ConfigDict()
    c.latent_dim = 32  # ours: size of each latent (S, P, I)
    c.hidden_dim = 256  # ours: width of every encoder/decoder/classifier MLP
    c.num_hidden_layers = 2  # ours: hidden layers per MLP (the paper says only "MLP")
    c.dropout = 0.1  # ours
    # Loss weights of eq. 1 and 5 (named in the paper, no values given):
    c.beta = 1e-3  # ours: KL weight (recon is a per-element MSE)
    c.alpha = 1.0  # ours: cross-modal alignment (eq. 3)
    c.gamma = 0.01  # ours: orthogonality (eq. 4)
    c.delta1 = 1.0  # ours: triplet (eq. 5); eq. 1's outer delta is folded in
    c.delta2 = 1.0  # ours: profile cross-entropy (eq. 5)
    c.triplet_margin = 1.0  # ours: margin on Euclidean distances between Z_I
    return c


def generation_defaults() -> ml_collections.ConfigDict:
    """Greedy M-CoE generation before the response stage (response_mcoe='generated'); all ours."""
    return ml_collections.ConfigDict(dict(
        max_new_tokens=160,       # also the chain budget at evaluation; the gold M-CoE of the
                                  # synthetic corpus is 78-120 SmolLM2 tokens
        batch_size=8,             # signal uses 32: decoding on a CPU is bandwidth-bound, rows are cheap
        splits=("train", "valid", "test"),  # splits present in the manifest are generated
        limit=0,                  # > 0: only the first `limit` examples per split (debugging)
        data_dir="",              # "" = WORKDIR/stage_outputs/data, set by the response stage's
                                  # prepare step; set it to resume a run inside the response stage
    ))


def _common() -> ml_collections.ConfigDict:
    c = base_config()
    c.system = "meria"  # merg_jax.systems.meria
    c.mcoe_model = model_defaults(lora=ml_collections.ConfigDict(MERIA_LORA))  # writes the chain of empathy
    c.response_model = model_defaults(lora=ml_collections.ConfigDict(MERIA_LORA))  # writes the reply
    c.pdr = pdr_defaults()
    c.projector = ml_collections.ConfigDict(dict(hidden_dim=0))  # ours; 0 = the LLM's hidden size
    c.use_pdr = True  # False: no PDR, a linear adapter instead (see the module docstring)
    c.use_ugf = True  # False: the paper's "w/o UGF" ablation
    c.use_mcoe = True  # False: the paper's "w/o M-CoE" ablation
    # OURS, off by default (0 = the paper: utterance signals averaged over the dialogue): > 0
    # weighs each utterance by softmax(-τ (1 - cos(μ_S^A, μ_S^V))) when pooling, so clips whose
    # voice and face disagree count less (merg_jax.models.fusion.agreement_row_weights;
    # measured by bench/ugf_conflict.py)
    c.fusion = ml_collections.ConfigDict(dict(agreement_temperature=0.0))
    # generated: the Response LLM trains on the chains the trained M-CoE LLM writes (the paper's
    # stage 3); gold: on the annotated chains (our ablation; inference never shows gold either way)
    c.response_mcoe = "generated"
    c.generation = generation_defaults()
    c.data = pipeline_defaults()
    c.data.data_dir = "data/synthetic-features"  # built on first use (data.synthetic.generate)
    c.data.template = "mcoe"  # input_pipeline.prompts.TEMPLATES name: the M-CoE LLM's prompt
    c.data.soft_tokens_per_slot = 4  # K virtual tokens per signal (ours; the paper: "fixed-length", no K)
    c.data.max_utterances = 8  # ours
    c.data.synthetic = synthetic_defaults()
    c.data.train_split = "train"  # split the stages train on
    c.data.eval_split = "valid"  # split the evaluations read
    # Templates: "mcoe" (M-CoE LLM) and "mcoe_response" (Response LLM) in input_pipeline.prompts.
    c.stages = ml_collections.ConfigDict({
        "pdr": stage("pdr", trainable=(r"pdr/.*",), epochs=20, learning_rate=1e-3,
                     data={"template": "mcoe"}),
        "mcoe": stage("mcoe", trainable=(r"projectors/.*", r"mcoe_llm/.*lora_[ab]"), epochs=4,
                      data={"template": "mcoe"}),
        "response": stage("response", trainable=(r"response_llm/.*lora_[ab]",), epochs=4,
                          data={"template": "mcoe_response"}),
    })
    c.stage_order = ("pdr", "mcoe", "response")  # the paper's three stages
    c.optimizer.learning_rate = 2e-4  # the LLM stages; the PDR stage sets its own 1e-3 (ours)
    return c


def smoke() -> ml_collections.ConfigDict:
    """SmolLM2-135M for both LLMs on the synthetic corpus, sized for 2 CPU cores (all ours)."""
    c = _common()
    c.data.global_batch_size = 4
    c.data.max_utterances = 4
    c.data.soft_tokens_per_slot = 2
    c.data.seq_buckets = (256, 288)  # synthetic M-CoE examples are 190-281 tokens
    c.pdr.hidden_dim = 128
    c.stages.pdr.steps = 300  # ~15 ms a step: the PDR is cheap next to the LLM stages
    c.stages.mcoe.steps = 25
    c.stages.response.steps = 25
    c.optimizer.learning_rate = 1e-3
    c.checkpoint.every_steps = 50
    c.log.every_steps = 5
    c.log.eval_every = 1000  # > the stage lengths: one evaluation at the end of each stage
    c.log.eval_batches = 4
    c.generation.limit = 0  # every example of every split
    # OURS, off-paper: stage 3 trains on the gold chains, which skips generating a chain for every
    # train example (minutes on 2 CPU cores); `signal` and the paper presets use generated chains.
    # Evaluation still feeds the Response LLM the chain the M-CoE LLM generates.
    c.response_mcoe = "gold"
    return c


def signal() -> ml_collections.ConfigDict:
    """Smoke sizes trained long enough to learn: the learning-signal runs in the README."""
    c = smoke()
    c.response_mcoe = "generated"  # the paper's stage 3 (smoke's gold chains are a shortcut)
    c.stages.pdr.steps = 600
    c.stages.mcoe.steps = 150
    c.stages.response.steps = 60
    c.generation.batch_size = 32  # decoding on a CPU is memory-bound: 32 rows cost little more than 8
    c.checkpoint.every_steps = 100
    return c


def _paper(hint: str) -> ml_collections.ConfigDict:
    """A Qwen3 backbone (the paper's is Qwen3-32B) from local weights.

    LoRA rank and alpha are the paper's (MERIA_LORA); lr 2e-4 and 4 epochs per LLM stage are
    not marked as the paper's; batch, lengths, precision and checkpointing are ours.
    """
    c = _common()
    for block in (c.mcoe_model, c.response_model):
        block.path = ml_collections.config_dict.placeholder(str)  # required: local weights
        block.path_hint = hint  # named in the error when path is not set
        block.dtype = "bfloat16"
        block.param_dtype = "bfloat16"
        block.remat = "full"
    c.projector.hidden_dim = 1024  # keeps the projectors ~1e8 params at d_model 5120
    c.data.global_batch_size = 32
    c.data.max_utterances = 12
    c.data.seq_buckets = (512, 1024, 2048)
    c.stages.pdr.epochs = 20
    c.stages.mcoe.epochs = 4
    c.stages.response.epochs = 4
    c.optimizer.learning_rate = 2e-4
    c.checkpoint.every_steps = 500
    c.generation.batch_size = 32
    c.generation.max_new_tokens = 256  # room for chains longer than the synthetic corpus's
    return c


PRESETS = {
    "smoke": smoke,
    "signal": signal,
    "qwen3_0p6b": lambda: _paper("Qwen3-0.6B"),
    "qwen3_8b": lambda: _paper("Qwen3-8B"),
    "qwen3_32b": lambda: _paper("Qwen3-32B"),
}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    name, build = select_preset(PRESETS, preset, "smoke")
    c = build()
    c.preset = name
    return c
