"""Perplexity of target tokens under a `CausalLM`, with and without the dialogue context.

Definition (the notes' reading of the early-fusion paper §5, "Fluency: PPL"):
    PPL = exp( sum_i NLL_i / sum_i T_i )
over examples i, NLL_i the summed negative log-likelihood (nats) of example i's
target tokens and T_i their number: the token-weighted mean, not a mean of
per-example perplexities.

The early-fusion paper reports a single PPL column and says neither what the language model
is conditioned on nor how tokens are aggregated.  We therefore name two variants:
  ppl_response      the gold response tokens (+ EOS) given what the system sees at
                    inference before it writes them: its inference prompt (dialogue,
                    soft prompts, for MERIA the *generated* chain) and, for templates
                    whose target states the emotion first, "Emotion: <its own predicted
                    emotion>\nResponse:" (`continuation_nll`).  The same quantity for
                    every system, so it is the one PPL to compare across rows.
  ppl_target_given_train_prompt
                    the evaluated stage's gold target given its training prompt: the
                    training loss' tokens (`loss_mask`); what the target is differs by
                    system (MERIA: the gold M-CoE chain; text baseline: emotion + response).
  ppl_context_free  the response alone: a start token, then the response's tokens
                    and EOS, no chat template, no history (`context_free_batch`);
                    it measures the fluency of the text by itself.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = ["perplexity", "target_nll", "context_free_batch", "start_token_id", "continuation_nll"]

_NEEDED = ("input_ids", "targets", "loss_mask", "attention_mask", "positions")


def perplexity(nll_sums: Any, token_counts: Any) -> float:
    """exp(sum(nll_sums) / sum(token_counts)); arrays of any shape (numpy, jax or lists).

    Accumulates in float64.  ValueError when there are no target tokens.
    """
    nll = np.asarray(jax.device_get(nll_sums), np.float64).sum()
    count = np.asarray(jax.device_get(token_counts), np.float64).sum()
    if count <= 0:
        raise ValueError("perplexity of zero target tokens is undefined")
    return float(np.exp(nll / count))


@nnx.jit
def _target_nll(model, input_ids, targets, loss_mask, attention_mask, positions, inputs_embeds):
    if inputs_embeds is None:
        out = model(input_ids, attention_mask=attention_mask, positions=positions)
    else:
        out = model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, positions=positions)
    logits = out.logits.astype(jnp.float32)
    picked = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    nll = jax.nn.logsumexp(logits, axis=-1) - picked
    mask = loss_mask.astype(jnp.float32)
    return jnp.sum(nll * mask, axis=1), jnp.sum(mask, axis=1)


def target_nll(model: nnx.Module, batch: Mapping[str, Any]) -> tuple[jax.Array, jax.Array]:
    """Per-example `(nll_sum, token_count)`, each float32[B], of the batch's target tokens.

    `batch` follows the pipeline contract (input_pipeline/pipeline.py docstring):
    input_ids, targets, loss_mask, attention_mask, positions; NLL_b =
    sum_t loss_mask[b,t] * -log softmax(logits[b,t])[targets[b,t]].  An optional
    `inputs_embeds` float[B,L,E] (soft prompts already spliced in) replaces the
    input ids.  Packed rows (segment_ids > 1) are refused: `CausalLM` does not mask
    attention between packed segments, so their scores would leak context.
    Other keys (example_id strings, features) are ignored.  The forward pass is
    `nnx.jit`-compiled once per batch shape.
    """
    missing = [k for k in _NEEDED if k not in batch]
    if missing:
        raise KeyError(f"batch lacks {missing} (pipeline contract: {list(_NEEDED)})")
    seg = batch.get("segment_ids")
    if seg is not None and int(np.max(np.asarray(seg))) > 1:
        raise ValueError("packed batch (segment_ids > 1): evaluate with packing disabled")
    arrays = [jnp.asarray(batch[k], jnp.int32) for k in _NEEDED]
    embeds = batch.get("inputs_embeds")
    return _target_nll(model, *arrays, None if embeds is None else jnp.asarray(embeds))


def start_token_id(tokenizer: Any) -> int:
    """BOS when the tokenizer has one, else EOS (the GPT-2 convention of a document start)."""
    tok = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if tok is None:
        raise ValueError("tokenizer has neither a BOS nor an EOS token to start a sequence")
    return int(tok)


def context_free_batch(tokenizer: Any, responses: Sequence[str], *, max_length: int | None = None,
                       pad_multiple: int = 16) -> dict[str, np.ndarray]:
    """A batch (pipeline contract, unpacked, right-padded) scoring each response alone.

    Row i is `[start] + tokens(response_i) + [eos]` (`start_token_id`; tokens without
    special tokens or chat template); every token after the start is a target, so
    T_i = len(tokens) + 1.  `max_length` cuts the response tokens from the right
    (EOS kept); rows are padded to a multiple of `pad_multiple` to bound recompiles.
    """
    start, eos = start_token_id(tokenizer), int(tokenizer.eos_token_id)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    seqs = []
    for text in responses:
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        if max_length is not None:
            ids = ids[:max(0, max_length - 2)]
        seqs.append([start] + ids + [eos])
    longest = max([len(s) for s in seqs] + [2])
    width = -(-longest // pad_multiple) * pad_multiple
    b = len(seqs)
    out = {k: np.zeros((b, width), np.int32) for k in
           ("input_ids", "targets", "loss_mask", "attention_mask", "positions", "segment_ids")}
    out["input_ids"][:] = pad
    out["targets"][:] = pad
    for r, seq in enumerate(seqs):
        n = len(seq)
        out["input_ids"][r, :n] = seq
        out["targets"][r, :n - 1] = seq[1:]
        out["loss_mask"][r, :n - 1] = 1
        out["attention_mask"][r, :n] = 1
        out["positions"][r, :n] = np.arange(n)
        out["segment_ids"][r, :n] = 1
    return out


def continuation_nll(model: nnx.Module, prompt_embeds: Any, prompt_mask: Any, continuations: Sequence[Sequence[int]],
                     scored_from: Sequence[int], *, pad_multiple: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Per row `(nll_sum, token_count)` (float64[B]) of `continuations[b][scored_from[b]:]` given
    the prompt `prompt_embeds[b]` ([B, P, E], its real tokens where `prompt_mask` [B, P] is 1,
    padding on either side) and the continuation tokens before `scored_from[b]`.

    Row b becomes [real prompt embeddings, embeddings of continuations[b]], right-padded to a
    multiple of `pad_multiple`, positions 0..n-1; token t+1 is scored when it lies in the
    scored part.  This is how a response is scored after a soft or text prompt alike.
    """
    mask = np.asarray(prompt_mask, np.int32)
    b = mask.shape[0]
    if len(continuations) != b or len(scored_from) != b:
        raise ValueError(f"{b} prompts, {len(continuations)} continuations, {len(scored_from)} offsets")
    n_prompt = mask.sum(axis=1)
    n_cont = np.asarray([len(c) for c in continuations])
    width = -(-int((n_prompt + n_cont).max()) // pad_multiple) * pad_multiple
    cont_w = max(1, int(n_cont.max()))
    cont = np.zeros((b, cont_w), np.int32)
    for r, c in enumerate(continuations):
        cont[r, :len(c)] = c
    order = np.argsort(1 - mask, axis=1, kind="stable")  # real prompt tokens first, order kept
    # gather index into [prompt (P) | continuation (C)] per output position
    src = np.full((b, width), mask.shape[1] + cont_w - 1, np.int64)
    targets = np.zeros((b, width), np.int32)
    loss_mask = np.zeros((b, width), np.int32)
    attn = np.zeros((b, width), np.int32)
    for r in range(b):
        n, c = int(n_prompt[r]), int(n_cont[r])
        src[r, :n] = order[r, :n]
        src[r, n:n + c] = mask.shape[1] + np.arange(c)
        attn[r, :n + c] = 1
        if c:
            targets[r, n - 1:n + c - 1] = continuations[r]
            first = n - 1 + int(scored_from[r])
            loss_mask[r, first:n + c - 1] = 1
    joint = jnp.concatenate([jnp.asarray(prompt_embeds), model.embed(jnp.asarray(cont)).astype(prompt_embeds.dtype)],
                            axis=1)
    embeds = jnp.take_along_axis(joint, jnp.asarray(src)[..., None], axis=1)
    positions = np.maximum(np.cumsum(attn, axis=1) - 1, 0).astype(np.int32)
    batch = {"input_ids": np.zeros((b, width), np.int32), "targets": targets, "loss_mask": loss_mask,
             "attention_mask": attn, "positions": positions, "inputs_embeds": embeds}
    nll, count = target_nll(model, batch)
    return np.asarray(nll, np.float64), np.asarray(count, np.float64)
