"""The early-fusion paper's text-only baseline: dialogue history in a prompt -> the next empathetic line.

One LoRA LLM, no soft prompts.  It is the floor the multimodal systems must beat:
on the synthetic corpus with `text_leak=0` the text carries no emotion, so its
emotion accuracy should stay near chance.
"""
from __future__ import annotations

from flax import nnx

from merg_jax.systems import common
from merg_jax.systems.base import System, build_llm


class TextBaseline(System):
    name = "text_baseline"

    def validate(self) -> None:
        from input_pipeline import prompts
        t = prompts.TEMPLATES.get(self.config.data.template)
        if t is None:
            raise ValueError(f"data.template={self.config.data.template!r} is unknown; use one of "
                             f"{sorted(prompts.TEMPLATES)}")
        if t.modalities:
            raise ValueError(f"data.template={t.name!r} has soft slots {t.modalities}; the text baseline "
                             "needs a text-only template such as 'listing1' or 'text_response'")

    def build(self, mesh) -> nnx.Module:
        llm, self._base = build_llm(self.config.model, mesh, self.config.seed)
        return TextModel(llm)

    def bases(self) -> dict[str, dict]:
        return {"llm": self._base}

    def data_config(self, stage, split, *, train):
        return common.data_view(self.config, stage, split, train=train)

    def loss(self, model, batch, key, stage, *, train):
        out = model.llm(batch["input_ids"], attention_mask=batch["attention_mask"],
                        positions=batch["positions"], dropout_key=key if train else None)
        return common.lm_loss(out.logits, batch["targets"], batch["loss_mask"])

    def step_flops(self, model, batch_shape, stage) -> float:
        return common.llm_step_flops(model.llm, batch_shape, frozen_base=True)

    def predict(self, model, batch, tokenizer, *, max_new_tokens):
        from merg_jax.generation import Generator, SamplingConfig
        gen = getattr(self, "_generator", None)
        if gen is None or gen[0] is not model:
            self._generator = gen = (model, Generator(model.llm, tokenizer))
        out = gen[1].generate_ids(common.prompt_ids(batch), SamplingConfig(max_new_tokens=max_new_tokens))
        one_line = common.single_line_target(self.eval_template())
        rows = []
        for text in out.texts:
            emotion, response = common.split_emotion_response(text)
            if one_line:  # Listing 1's bare next line: the first line is the response, `raw` keeps all
                response = common.first_line(response)
            rows.append({"generated_chain": "", "response": response, "predicted_emotion": emotion,
                         "raw": text})
        return rows

    def llm(self, model, which: str = "response"):
        return model.llm


class TextModel(nnx.Module):
    def __init__(self, llm):
        self.llm = llm
