"""Greedy generation throughput: merg-jax vs transformers.generate on SmolLM2-135M.

    python bench/generate.py [--batch_sizes=1,16] [--new_tokens=128] [--dtype=float32]

Both sides generate exactly `new_tokens` per row (EOS disabled) from the same
chat-templated prompts, after a warm-up (compilation is excluded for us; torch
has no compile step).  Prints tokens/s for each and the ratio.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PROMPTS = [
    "I failed my driving test today.", "My dog passed away last night.",
    "I finally got the job I wanted!", "My best friend forgot my birthday.",
    "I'm nervous about my surgery next week.", "Someone scratched my new car.",
    "We are moving to a new city and I don't know anyone.", "I won the chess tournament!",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch_sizes", default="1,16")
    ap.add_argument("--new_tokens", type=int, default=128)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--model", default=None, help="GGUF or HF dir (default: the SmolLM2 wheel)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    import jax
    import torch
    import transformers

    from merg_jax.convert.loading import load_pretrained
    from merg_jax.core import assets
    from merg_jax.generation import Generator, SamplingConfig

    path = args.model or assets.smollm2_gguf()
    model, tok = load_pretrained(path, dtype=args.dtype)
    gen = Generator(model, tok)
    tdtype = torch.float32 if args.dtype == "float32" else torch.bfloat16
    if path.endswith(".gguf"):
        ref = transformers.AutoModelForCausalLM.from_pretrained(
            os.path.dirname(path), gguf_file=os.path.basename(path), dtype=tdtype)
    else:
        ref = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=tdtype)
    ref.eval()
    print(f"device: jax {jax.devices()[0].platform} x{jax.device_count()}, torch threads {torch.get_num_threads()}, "
          f"dtype {args.dtype}, {args.new_tokens} new tokens, greedy")
    cfg = SamplingConfig(max_new_tokens=args.new_tokens, eos_token_ids=(-1,))
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(bs)]
        ids = gen.encode(prompts, chat=True)
        gen.generate_ids(ids, cfg)  # compile
        t0 = time.perf_counter()
        res = gen.generate_ids(ids, cfg)
        ours_s = time.perf_counter() - t0
        ours_tps = res.new_tokens / ours_s

        p = max(map(len, ids))
        inp = torch.full((bs, p), tok.pad_token_id)
        am = torch.zeros((bs, p), dtype=torch.long)
        for i, x in enumerate(ids):
            inp[i, p - len(x):] = torch.tensor(x)
            am[i, p - len(x):] = 1
        kw = dict(attention_mask=am, do_sample=False, max_new_tokens=args.new_tokens,
                  min_new_tokens=args.new_tokens, pad_token_id=tok.pad_token_id)
        with torch.no_grad():
            ref.generate(inp, **{**kw, "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up
            t0 = time.perf_counter()
            out = ref.generate(inp, **kw)
            hf_s = time.perf_counter() - t0
        hf_tps = (out.shape[1] - p) * bs / hf_s
        print(f"batch {bs:3d}: merg-jax {ours_tps:8.1f} tok/s ({ours_s:.2f}s)   transformers {hf_tps:8.1f} tok/s "
              f"({hf_s:.2f}s)   ratio {ours_tps / hf_tps:.2f}x   [prefill {res.prefill_s * 1e3:.0f} ms]")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
