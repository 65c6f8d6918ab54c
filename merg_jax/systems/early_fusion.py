"""The early-fusion paper's ImageBind MLLM: early-fused audio-visual soft prompt + LoRA LLM.

What the paper specifies (the early-fusion paper, Sec. 4.3, Fig. 1):
  * audio and visual embeddings (ImageBind, one shared 1024-d space) are ADDED
    element-wise into one joint audio-visual embedding;
  * ONE linear projector maps the joint embedding into the LLM's embedding space;
  * the projected embedding is PREPENDED to the prompt embeddings of Listing 1
    (instructions + dialogue history) and the LLM generates the response;
  * the projector is trainable, the encoders frozen; the LLM is fine-tuned with
    (Q)LoRA r 8, alpha 16, dropout 0.1 (Llama-3-8B-Instruct / Mistral-7B-Instruct).

What is ours (the deviations and the choices the paper leaves open):
  * Our extracted features are not ImageBind's joint space: audio and video have
    different widths (180 vs 775 in the real extraction), so a plain sum is not
    defined.  Each modality first goes through its own linear map to a common
    width `model.fusion_dim` (`audio_proj`, `video_proj`, with bias); the two
    results are summed.  These per-modality maps play ImageBind's projection heads
    and are trained here (ImageBind's are frozen and pretrained).
  * Masked sum: a missing (or truncated) modality row contributes exactly 0, i.e.
    joint = [audio ok]·audio_proj(a) + [video ok]·video_proj(v).  With both
    missing the joint vector is 0 and the slot gets projector(0) = its bias: a
    learned "no signal" token (the slot stays, the prompt layout never changes).
  * The paper's single joint embedding per example becomes one joint embedding per
    history utterance (prompt template `early_fusion`: one `audio_video` slot per
    utterance, prepended as <Prefix>), and each slot is K =
    data.soft_tokens_per_slot tokens: the projector (`projector`, the paper's
    Linear Projector, with bias) maps fusion_dim -> K·d_model, reshaped to K
    tokens; token k of a slot is row k of that reshape.  K = 1 is the paper's form.
The LLM comes from `config.model` (base.build_llm); the soft tokens replace the
placeholder embeddings at `soft_positions` before the decoder runs.

Inference (`predict`) splices the same soft tokens (features normalised as in training)
and continues the embeddings with the one decoder, `Generator.generate_embeds`, greedy.
The target is the bare next line (Listing 1), so the response is the generation's first
non-empty line (`raw` keeps the whole text; common.first_line says why); this system
states no emotion.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from input_pipeline.pipeline import feature_dims
from merg_jax.generation import Generator, SamplingConfig
from merg_jax.models.layers import Linear, splice
from merg_jax.systems import common
from merg_jax.systems.base import ResponsePrompts, System, build_llm

AUDIO_VIDEO = 3  # prompts.MODALITY_IDS["audio_video"]


class EarlyFusion(System):
    name = "early_fusion"

    def validate(self) -> None:
        from input_pipeline import prompts
        t = prompts.TEMPLATES.get(self.config.data.template)
        if t is None:
            raise ValueError(f"data.template={self.config.data.template!r} is unknown; use one of "
                             f"{sorted(prompts.TEMPLATES)}")
        mods = tuple(self.config.data.get("soft_modalities") or t.modalities)
        if set(mods) != {"audio_video"}:
            raise ValueError(f"data.template={t.name!r} has soft slots {t.modalities}; early fusion needs "
                             "exactly one 'audio_video' slot kind, e.g. data.template='early_fusion'")
        if not t.prefix_per_utterance:
            raise ValueError(f"data.template={t.name!r}: early fusion needs per-utterance slots "
                             "(prefix_per_utterance), e.g. data.template='early_fusion'")
        if self.config.data.get("packing"):
            raise ValueError("data.packing=True: the LLM takes no segment_ids, so packed examples would "
                             "attend to each other; set data.packing=False for early fusion")
        if int(self.config.model.get("fusion_dim", 0)) < 1:
            raise ValueError("model.fusion_dim must be a positive int (the common audio/video width)")

    def feature_dims(self) -> dict[str, int]:
        """config.data.feature_dims, else the data's manifest / first record (as the pipeline does)."""
        d = self.config.data
        return feature_dims(d.data_dir, d.get("train_split", "train"), override=d.get("feature_dims"))

    def build(self, mesh) -> nnx.Module:
        llm, self._base = build_llm(self.config.model, mesh, self.config.seed)
        dims = self.feature_dims()
        for m in ("audio", "video"):
            if dims.get(m, 0) < 1:
                raise ValueError(f"early fusion needs {m} features but the data has width {dims.get(m)}; "
                                 "extract them or set data.feature_dims")
        self._norm = common.FeatureNorm.from_data(self.config.data.data_dir,
                                                  self.config.data.get("train_split", "train"))
        k = int(self.config.data.soft_tokens_per_slot)
        linears = _sharded(lambda: EarlyFusionModel.make_linears(
            dims["audio"], dims["video"], int(self.config.model.fusion_dim), k, llm.config.hidden_size,
            dtype=llm.config.jnp_dtype, seed=self.config.seed + 1), mesh)
        return EarlyFusionModel(llm, *linears, k=k)

    def bases(self) -> dict[str, dict]:
        return {"llm": self._base}

    def data_config(self, stage, split, *, train):
        return common.data_view(self.config, stage, split, train=train)

    def loss(self, model, batch, key, stage, *, train):
        batch = dict(batch, audio=self._norm("audio", batch["audio"]), video=self._norm("video", batch["video"]))
        embeds = soft_embeds(model, batch)
        out = model.llm(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                        positions=batch["positions"], dropout_key=key if train else None)
        return common.lm_loss(out.logits, batch["targets"], batch["loss_mask"])

    def step_flops(self, model, batch_shape, stage) -> float:
        # The projector is a few matmuls per history row: negligible next to the LLM.
        return common.llm_step_flops(model.llm, batch_shape, frozen_base=True)

    def predict(self, model, batch, tokenizer, *, max_new_tokens):
        """Greedy responses for the real examples (example_mask 1) of a prompt-only batch."""
        keep = [bool(k) for k in batch.get("example_mask", [1] * len(batch["input_ids"]))]
        texts = self._decoder(model, tokenizer).decode(batch, max_new_tokens)
        one_line = common.single_line_target(self.eval_template())
        return [{"generated_chain": "", "response": common.first_line(t) if one_line else t,
                 "predicted_emotion": "", "raw": t} for t, k in zip(texts, keep) if k]

    def response_prompts(self, model, batch, rows) -> ResponsePrompts:
        """The Listing 1 prompt with the audio-visual soft tokens spliced in, as predict() decoded it."""
        keep = np.asarray(batch.get("example_mask", [1] * len(batch["input_ids"])), bool)
        embeds = self._decoder_cache[2].embeds(batch)
        return ResponsePrompts(model.llm, common.prompt_ids(batch), embeds[keep],
                               np.asarray(batch["attention_mask"])[keep], self.response_template())

    def _decoder(self, model, tokenizer) -> "EarlyFusionDecoder":
        hit = getattr(self, "_decoder_cache", None)
        if hit is None or hit[0] is not model or hit[1] is not tokenizer:
            self._decoder_cache = hit = (model, tokenizer, EarlyFusionDecoder(model, self._norm, tokenizer))
        return hit[2]

    def llm(self, model, which: str = "response"):
        return model.llm


class EarlyFusionDecoder:
    """Soft prompts spliced into a batch's embeddings (jitted), continued by the one decoder."""

    def __init__(self, model: "EarlyFusionModel", norm: common.FeatureNorm, tokenizer):
        self.generator = Generator(model.llm, tokenizer)
        graphdef, state = nnx.split(model)

        @jax.jit
        def embeds(state, batch):
            b = dict(batch, audio=norm("audio", batch["audio"]), video=norm("video", batch["video"]))
            return soft_embeds(nnx.merge(graphdef, state), b)
        self._embeds = lambda batch: embeds(state, batch)

    def embeds(self, batch: dict) -> jax.Array:
        """[B, L, E] input embeddings of a (host) batch, soft tokens at their slots."""
        need = ("input_ids", "audio", "video", "audio_mask", "video_mask", "soft_positions", "soft_utterance",
                "soft_index", "soft_mask", "soft_modality")
        return self._embeds({k: jnp.asarray(batch[k]) for k in need})

    def decode(self, batch: dict, max_new_tokens: int) -> list[str]:
        """One text per row of `batch` (padding rows included), EOS cut, whitespace stripped."""
        if max_new_tokens <= 0:
            return [""] * len(batch["input_ids"])
        out = self.generator.generate_embeds(self.embeds(batch), np.asarray(batch["attention_mask"]),
                                             SamplingConfig(max_new_tokens=int(max_new_tokens)))
        return [t.strip() for t in out.texts]


def soft_embeds(model: "EarlyFusionModel", batch: dict) -> jax.Array:
    """Token embeddings of input_ids with each audio_video slot's soft tokens spliced in."""
    embeds = model.llm.embed(batch["input_ids"])
    tokens = model.fusion(batch["audio"], batch["video"], batch["audio_mask"], batch["video_mask"])
    values = gather_slots(tokens, batch["soft_utterance"], batch["soft_index"])
    mask = batch["soft_mask"] * (batch["soft_modality"] == AUDIO_VIDEO) * (batch["soft_utterance"] >= 0)
    return splice(embeds, batch["soft_positions"], mask, values)


def gather_slots(tokens: jax.Array, utterance: jax.Array, index: jax.Array) -> jax.Array:
    """tokens [B, R, K, E] (per feature row) -> [B, N, E]: row soft_utterance, token soft_index."""
    b = jnp.arange(tokens.shape[0])[:, None]
    r = jnp.clip(utterance, 0, tokens.shape[1] - 1)  # negative (dialogue-level) slots are masked off
    k = jnp.clip(index, 0, tokens.shape[2] - 1)
    return tokens[b, r, k]


class EarlyFusionModel(nnx.Module):
    """Parameter paths: audio_proj/*, video_proj/* (ours), projector/* (the paper's), llm/*."""

    def __init__(self, llm, audio_proj: Linear, video_proj: Linear, projector: Linear, k: int):
        self.llm = llm
        self.audio_proj = audio_proj
        self.video_proj = video_proj
        self.projector = projector
        self.k = k

    @staticmethod
    def make_linears(audio_dim: int, video_dim: int, fusion_dim: int, k: int, d_model: int, *,
                     dtype=jnp.float32, seed: int = 0) -> tuple[Linear, Linear, Linear]:
        rngs = nnx.Rngs(seed)
        lin = dict(use_bias=True, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
        return (Linear(audio_dim, fusion_dim, name="audio_proj", names=(None, "embed"), **lin),
                Linear(video_dim, fusion_dim, name="video_proj", names=(None, "embed"), **lin),
                Linear(fusion_dim, k * d_model, name="projector", names=("embed", None), **lin))

    def fusion(self, audio: jax.Array, video: jax.Array, audio_mask: jax.Array, video_mask: jax.Array
               ) -> jax.Array:
        """[B, R, D_a], [B, R, D_v], bool [B, R] x2 -> soft tokens [B, R, K, d_model] per feature row.

        joint = [audio ok]·audio_proj(a) + [video ok]·video_proj(v)   (a missing modality adds 0)
        tokens = projector(joint) reshaped to K tokens of d_model.
        """
        a = jnp.where(audio_mask[..., None], self.audio_proj(audio), 0.0)
        v = jnp.where(video_mask[..., None], self.video_proj(video), 0.0)
        out = self.projector(a + v)
        return out.reshape(*out.shape[:-1], self.k, out.shape[-1] // self.k)


def _sharded(make, mesh):
    """Builds small modules (a pytree of them) with their params created directly in their shards."""
    from merg_jax.core.sharding import state_shardings
    abstract = nnx.eval_shape(make)
    shardings = state_shardings(nnx.state(abstract), mesh)
    state = jax.jit(lambda: nnx.state(make()), out_shardings=shardings)()
    return nnx.merge(nnx.graphdef(abstract), state)
