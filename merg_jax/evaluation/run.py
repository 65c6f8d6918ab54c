"""Evaluate a trained system over a split: generate, score, write tables and pictures.

Outputs in `output_dir`: predictions.jsonl, metrics.json, metrics.md,
submission.json (AvaMERG challenge format) and PNG plots.  Every metric is
named by its variant (dist_2_corpus vs dist_2_mean, ppl_response vs
ppl_target_given_train_prompt vs ppl_context_free) because the papers compute them
differently.  No gold field reaches a prompt the models generate from: the generation
view is built in inference mode (input_pipeline/prompts.py), and each prediction row
carries the exact prompt the response came from (`response_prompt`).
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np

log = logging.getLogger(__name__)


def _view(system, split: str, *, with_target: bool, batch_size: int) -> ml_collections.ConfigDict:
    cfg = system.data_config(system.eval_stage(), split, train=False)
    with cfg.unlocked():
        cfg.include_target = with_target
        # generation prompts are inference prompts; the teacher-forced view is the training prompt
        cfg.prompt_mode = "train" if with_target else "inference"
        cfg.global_batch_size = batch_size
        cfg.packing = False
        cfg.worker_count = 0
    return cfg


def _records(cfg) -> dict[str, dict]:
    """example_id -> the raw record fields evaluation needs (history, gold labels)."""
    from input_pipeline.extract_io import iter_records
    keys = ("conversation_id", "turn_id", "history_texts", "history_roles", "response", "emotion")
    return {rec["example_id"]: {k: rec.get(k) for k in keys} for rec in iter_records(cfg.data_dir, cfg.split)}


def evaluate(llm, tokenizer, info: dict, *, split: str = "test", output_dir: str = "", max_examples: int = 0,
             batch_size: int = 8, max_new_tokens: int = 96, bertscore: bool = True,
             classifier_dir: str = "", plots: bool = True) -> dict[str, Any]:
    """Scores a loaded run over `split`: (llm, tokenizer, info) as
    `merg_jax.systems.workdir.load_workdir` returns them (info carries the system, its model
    tree, the workdir and the step); `merg_jax.systems.jobs.evaluate_workdir` does both."""
    from input_pipeline.pipeline import make_iterator, to_global
    from merg_jax.core.console import Progress
    from merg_jax.core.sharding import make_mesh
    from merg_jax.evaluation import distinct, emotion, report, submission
    from merg_jax.evaluation.perplexity import context_free_batch, perplexity, target_nll

    workdir = info["workdir"]
    output_dir = output_dir or os.path.join(workdir, f"eval_{split}")
    os.makedirs(output_dir, exist_ok=True)
    system, model = info["system_obj"], info["model"]
    mesh = make_mesh(1, -1, 1)

    # 1) generation over the prompt-only view
    cfg = _view(system, split, with_target=False, batch_size=batch_size)
    recs = _records(cfg)
    rows, t0 = [], time.perf_counter()
    total = min(max_examples, len(recs)) if max_examples else len(recs)
    bar = Progress(f"generate {split}", total, every=max(batch_size, math.ceil(total / 20)), unit="example")
    resp_nll = resp_tok = 0.0
    for batch in make_iterator(cfg):
        ids = [str(x) for x, k in zip(batch["example_id"], batch["example_mask"]) if k]
        outs = system.predict(model, batch, tokenizer, max_new_tokens=max_new_tokens)
        scored = _score_responses(system, model, batch, outs, [recs.get(e, {}).get("response") or "" for e in ids],
                                  tokenizer)
        for eid, out, (prompt_text, nll_i, tok_i) in zip(ids, outs, scored):
            resp_nll, resp_tok = resp_nll + nll_i, resp_tok + tok_i
            r = recs.get(eid, {})
            rows.append({"example_id": eid, "conversation_id": r.get("conversation_id", ""),
                         "turn_id": r.get("turn_id", ""),
                         "prompt": "\n".join(f"{a}: {b}" for a, b in zip(r.get("history_roles") or [],
                                                                         r.get("history_texts") or [])),
                         "generated_chain": out.get("generated_chain", ""), "response": out["response"],
                         "predicted_emotion": emotion.label_of(out["predicted_emotion"]),
                         "predicted_emotion_text": out["predicted_emotion"], "gold_emotion": r.get("emotion", ""),
                         "gold_response": r.get("response", ""), "raw_output": out.get("raw", ""),
                         "response_prompt": prompt_text, "response_nll": round(nll_i, 4),
                         "response_tokens": int(tok_i),
                         **({"chain_empty": bool(out["chain_empty"])} if "chain_empty" in out else {})})
        bar.update(min(len(rows), total))
        if max_examples and len(rows) >= max_examples:
            rows = rows[:max_examples]
            break
    bar.close()
    log.info("generated %d examples (%.0f s)", len(rows), time.perf_counter() - t0)
    gen_s = time.perf_counter() - t0

    responses = [r["response"] for r in rows]
    metrics: dict[str, Any] = {"n": len(rows), "split": split, "workdir": os.path.abspath(workdir),
                               "step": info["step"], "system": info["system"], "generation_s": round(gen_s, 1)}
    if any("chain_empty" in r for r in rows):  # a system with a chain: how often it was empty
        metrics["chains_empty"] = sum(bool(r.get("chain_empty")) for r in rows)
    preds, golds = [r["predicted_emotion_text"] or None for r in rows], [r["gold_emotion"] for r in rows]
    acc = emotion.emotion_accuracy(preds, golds)
    exact = emotion.emotion_accuracy_exact(preds, golds)
    if system.states_emotion():  # a system that states no emotion gets no emotion accuracy (not 0)
        metrics.update({"emotion_acc_fine": acc["acc_fine"], "emotion_acc_coarse": acc["acc_coarse"],
                        "emotion_acc_exact_fine": exact["acc_fine"], "emotion_acc_exact_coarse": exact["acc_coarse"],
                        "emotion_unparseable": acc["n_unparseable"]})
    if rows:
        metrics["ppl_response"] = perplexity(np.asarray([resp_nll]), np.asarray([resp_tok]))
    for n in (1, 2):
        metrics[f"dist_{n}_corpus"] = distinct.dist_n_corpus(responses, n)
        metrics[f"dist_{n}_mean"] = distinct.dist_n_mean(responses, n)

    # 2) perplexity of the gold targets: with the prompt (the system's own loss) and context-free
    cfg_t = _view(system, split, with_target=True, batch_size=batch_size)
    stage = system.eval_stage()
    from flax import nnx
    graphdef, state = nnx.split(model)
    nll_fn = jax.jit(lambda st, b: system.loss(nnx.merge(graphdef, st), b, None, stage, train=False)[1])
    nll = tok = 0.0
    seen = 0
    for batch in make_iterator(cfg_t):
        aux = nll_fn(state, to_global(batch, mesh))
        nll, tok = nll + float(aux["nll_sum"]), tok + float(aux["tokens"])
        seen += int(np.sum(batch["example_mask"]))
        if max_examples and seen >= max_examples:
            break
    metrics["ppl_target_given_train_prompt"] = perplexity(np.asarray([nll]), np.asarray([tok]))
    golds = [r["gold_response"] for r in rows]
    cf_nll = cf_tok = 0.0
    for i in range(0, len(golds), batch_size):
        b = context_free_batch(tokenizer, golds[i:i + batch_size])
        s, c = target_nll(llm, b)
        cf_nll, cf_tok = cf_nll + float(np.sum(s)), cf_tok + float(np.sum(c))
    metrics["ppl_context_free"] = perplexity(np.asarray([cf_nll]), np.asarray([cf_tok]))

    # 3) similarity and polarity
    if bertscore and rows:
        from merg_jax.evaluation.bertscore import BertScorer
        res = BertScorer().score(responses, golds)
        metrics.update({"bertscore_p": float(np.mean(res.precision)), "bertscore_r": float(np.mean(res.recall)),
                        "bertscore_f1": float(np.mean(res.f1))})
    from merg_jax.evaluation.polarity import polarity_scores
    pol = polarity_scores(responses, [recs.get(r["example_id"], {}).get("history_texts") or [] for r in rows],
                          classifier_dir or None)
    metrics.update(pol.summary())

    # 4) what the PDR latents hold (MERIA): linear emotion probes, t-SNE pictures
    lat = None
    if hasattr(system, "pdr_latents"):
        from merg_jax.evaluation import latents as latents_lib
        t1 = time.perf_counter()
        lat = latents_lib.collect(system, model, _view(system, split, with_target=False, batch_size=batch_size))
        train_split = system.config.data.get("train_split", "train")
        lat_train = latents_lib.collect(system, model, _view(system, train_split, with_target=False,
                                                             batch_size=batch_size), max_rows=4000)
        metrics.update(latents_lib.probe_accuracy(lat_train, lat))
        log.info("latent probes in %.0f s", time.perf_counter() - t1)

    # 5) files
    submission.write_predictions_jsonl(os.path.join(output_dir, "predictions.jsonl"), rows)
    submission.write_submission(os.path.join(output_dir, "submission.json"), rows)
    with open(os.path.join(output_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2, default=float)
    shown = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k not in ("step",)}
    with open(os.path.join(output_dir, "metrics.md"), "w") as f:
        f.write(report.metrics_markdown(shown, f"{info['system']} on {split} ({len(rows)} examples)"))
    if plots:
        _plots(workdir, output_dir, pol)
        if lat is not None:
            latents_lib.plot(lat, latents_lib.label_names(cfg.data_dir), output_dir)
    log.info("evaluation written to %s", output_dir)
    return metrics


def response_continuation(tokenizer, template: str, predicted_emotion: str, gold_response: str
                          ) -> tuple[list[int], int]:
    """(tokens, first scored index) of what follows the response prompt when the gold response
    is scored: the template's target up to the response with the system's own predicted
    emotion filled in ("Emotion: sad\nResponse:" for mcoe_response; nothing for Listing 1),
    then the gold response and EOS.  Only the response + EOS are scored."""
    from input_pipeline.prompts import TEMPLATES, render_target
    mark = "\ue001"
    text = render_target(TEMPLATES[template], {"emotion": predicted_emotion or "", "response": mark})
    prefix = text.split(mark, 1)[0] if mark in text else ""
    response = gold_response
    if prefix.endswith(" "):  # "Response: I ..." tokenizes as "Response:" + " I ...", as in training
        prefix, response = prefix[:-1], " " + response
    pre = list(tokenizer(prefix, add_special_tokens=False)["input_ids"]) if prefix else []
    resp = list(tokenizer(response, add_special_tokens=False)["input_ids"]) + [int(tokenizer.eos_token_id)]
    return pre + resp, len(pre)


def _score_responses(system, model, batch: dict, outs: list[dict], golds: list[str], tokenizer
                     ) -> list[tuple[str, float, float]]:
    """Per real row: (exact response prompt text, NLL sum of the gold response, its tokens)."""
    from merg_jax.evaluation.perplexity import continuation_nll
    rp = system.response_prompts(model, batch, outs)
    for out in outs:
        out.pop("response_prompt_ids", None)
    if not outs:
        return []
    embeds, mask = rp.embeds, rp.mask
    if embeds is None:  # a text prompt: embed its tokens (right-padded)
        width = max(len(x) for x in rp.ids)
        ids = np.zeros((len(rp.ids), width), np.int32)
        mask = np.zeros((len(rp.ids), width), np.int32)
        for i, x in enumerate(rp.ids):
            ids[i, :len(x)], mask[i, :len(x)] = x, 1
        embeds = rp.llm.embed(jax.numpy.asarray(ids))
    conts = [response_continuation(tokenizer, rp.template, o.get("predicted_emotion", ""), g)
             for o, g in zip(outs, golds)]
    nll, tok = continuation_nll(rp.llm, embeds, mask, [c for c, _ in conts], [s for _, s in conts])
    texts = [tokenizer.decode(x) for x in rp.ids]
    return [(t, float(a), float(b)) for t, a, b in zip(texts, nll, tok)]


def _plots(workdir: str, output_dir: str, pol) -> None:
    from merg_jax.evaluation import plots
    scores = {"sentiment": pol.sentiment}
    if pol.emotion is not None:
        scores.update(emotion=pol.emotion, empathy=pol.empathy)
    finite = {k: [float(x) for x in v if math.isfinite(float(x))] for k, v in scores.items()}
    if any(finite.values()):
        plots.plot_polarity_hist(finite, os.path.join(output_dir, "polarity.png"))
    tb = os.path.join(workdir, "tensorboard")
    if os.path.isdir(tb):
        try:
            plots.plot_training_curves(tb, os.path.join(output_dir, "training_curves.png"))
        except ValueError as e:  # no scalars yet
            log.warning("no training curves: %s", e)
