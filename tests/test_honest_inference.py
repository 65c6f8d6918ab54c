"""No gold at inference, comparable metrics: prompt modes, ppl_response, exact emotion accuracy,
evaluation overrides.  Hand-computed values and independent reference computations."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

GOLD = {"emotion": "zyxemotion", "cause": "the qwvcause happened", "response": "Plughresponse is here.",
        "event": "An xqzevent.", "visual": "a jxsmile", "goal": "Comfort vvgoal."}


def _record(generated=None) -> dict:
    rec = {"example_id": "e0", "history_texts": ["I lost my keys.", "Oh no."], "history_roles": ["speaker", "listener"],
           "response": GOLD["response"], "emotion": GOLD["emotion"],
           "m_coe": {"visual_observation": GOLD["visual"], "visual_emotion": GOLD["emotion"],
                     "visual_confidence": "high", "audio_observation": "a sigh", "audio_emotion": GOLD["emotion"],
                     "audio_confidence": "low", "event_scenario": GOLD["event"], "speaker_emotion": GOLD["emotion"],
                     "emotion_cause": GOLD["cause"], "goal_to_response": GOLD["goal"]}}
    if generated is not None:
        rec["generated_mcoe"] = generated
    return rec


@pytest.fixture(scope="module")
def smollm2_tok_path():
    from merg_jax.core.assets import smollm2_gguf
    return smollm2_gguf()


def _builder(path, **kw):
    from input_pipeline.prompts import PromptBuilder
    return PromptBuilder("mcoe_response", path, max_length=512, max_utterances=4, **kw)


def _gold_in(text: str) -> list[str]:
    low = text.lower()
    return [k for k, v in GOLD.items() if any(w.lower() in low for w in v.split() if len(w) > 6)]


@pytest.mark.parametrize("generated", [None, "", "   "])
def test_inference_prompt_with_empty_chain_shows_no_gold(smollm2_tok_path, generated):
    b = _builder(smollm2_tok_path, include_target=False, mode="inference")
    built = b.build(_record(generated))
    text = b.tokenizer.decode(built.tokens.tolist())
    assert _gold_in(text) == [], text
    assert built.chain_empty and "I lost my keys." in text and built.target_text == ""
    # even when a training config asked for gold chains, inference mode overrides it
    b_gold = _builder(smollm2_tok_path, include_target=False, mode="inference", chain_source="gold")
    assert _gold_in(b_gold.tokenizer.decode(b_gold.build(_record()).tokens.tolist())) == []


def test_train_modes_render_their_chain_source(smollm2_tok_path):
    gold = _builder(smollm2_tok_path, include_target=False, chain_source="gold")
    text = gold.tokenizer.decode(gold.build(_record("a generated chain")).tokens.tolist())
    assert set(_gold_in(text)) >= {"cause", "event", "visual", "goal"} and "a generated chain" not in text
    gen = _builder(smollm2_tok_path, include_target=False, chain_source="generated")
    built = gen.build(_record("a generated chain"))
    text = gen.tokenizer.decode(built.tokens.tolist())
    assert "a generated chain" in text and _gold_in(text) == [] and not built.chain_empty
    assert gen.build(_record()).chain_empty  # no generation: empty, counted, never gold
    with pytest.raises(ValueError, match="prompt mode"):
        _builder(smollm2_tok_path, mode="eval")


def test_meria_views_choose_the_chain_source():
    """The response stage trains on what response_mcoe asks for; evaluation views are inference."""
    from configs.meria import get_config
    from merg_jax.systems.meria import Meria
    for source in ("gold", "generated"):
        c = get_config("smoke")
        c.response_mcoe = source
        c.generation.data_dir = "/derived"  # as the prepare step would set it
        s = Meria(c)
        s.resolve()
        view = s.data_config(c.stages.response, "train", train=True)
        assert view.chain_source == source and view.prompt_mode == "train"
        assert view.data_dir == ("/derived" if source == "generated" else c.data.data_dir)


def test_exact_emotion_accuracy_by_hand():
    from merg_jax.evaluation.emotion import emotion_accuracy, emotion_accuracy_exact
    preds = ["Sad.", "very sad", "sad, I think", "joyful", "joy", None, "Surprised"]
    golds = ["sad", "sad", "sad", "joyful", "joyful", "sad", "afraid"]
    exact = emotion_accuracy_exact(preds, golds)
    # fine: "Sad." and "joyful" only; coarse: + "joy" (coarse happy = joyful's coarse class)
    assert exact["acc_fine"] == pytest.approx(2 / 7) and exact["acc_coarse"] == pytest.approx(3 / 7)
    lenient = emotion_accuracy(preds, golds)
    assert lenient["acc_fine"] == pytest.approx(4 / 7)  # the first known word: + "very sad", "sad, I think"


def test_response_continuation_follows_the_template(smollm2_tok_path):
    from merg_jax.core.tokenizer import load_tokenizer
    from merg_jax.evaluation.run import response_continuation
    tok = load_tokenizer(smollm2_tok_path)
    ids, start = response_continuation(tok, "mcoe_response", "sad", "I am sorry.")
    assert tok.decode(ids[:start]) == "Emotion: sad\nResponse:"
    assert tok.decode(ids[start:-1]) == " I am sorry." and ids[-1] == tok.eos_token_id
    ids, start = response_continuation(tok, "listing1", "sad", "I am sorry.")
    assert start == 0 and tok.decode(ids[:-1]) == "I am sorry."
    ids, start = response_continuation(tok, "mcoe_response", "", "Hi.")  # no emotion predicted
    assert tok.decode(ids[:start]) == "Response:"


def test_continuation_nll_matches_a_full_forward(tmp_path):
    """Scores after left- or right-padded prompt embeddings equal a plain forward over
    [prompt tokens, continuation] with log-softmax by hand, on the scored tokens only."""
    from merg_jax.convert.loading import load_pretrained
    from merg_jax.evaluation.perplexity import continuation_nll

    from train_fixtures import write_tiny_llama
    llm, _ = load_pretrained(write_tiny_llama(str(tmp_path / "tiny")), with_tokenizer=False)
    prompts = [[5, 9, 11, 4], [7, 3]]
    conts, starts = [[21, 22, 23, 2], [30, 2]], [1, 0]
    p = 6
    for side in ("right", "left"):
        ids = np.zeros((2, p), np.int32)
        mask = np.zeros((2, p), np.int32)
        for i, x in enumerate(prompts):
            sl = slice(0, len(x)) if side == "right" else slice(p - len(x), p)
            ids[i, sl], mask[i, sl] = x, 1
        nll, count = continuation_nll(llm, llm.embed(jnp.asarray(ids)), mask, conts, starts)
        for i, (x, c, s) in enumerate(zip(prompts, conts, starts)):
            seq = jnp.asarray([x + c])
            logp = jax.nn.log_softmax(np.asarray(llm(seq).logits[0], np.float64), -1)
            want = -sum(float(logp[len(x) - 1 + j, c[j]]) for j in range(s, len(c)))
            assert count[i] == len(c) - s
            np.testing.assert_allclose(nll[i], want, rtol=2e-5, err_msg=f"{side} row {i}")
    assert math.isfinite(float(nll.sum()))


def test_eval_overrides_change_decoding_never_the_model():
    from configs.meria import get_config
    from merg_jax.systems.workdir import apply_eval_overrides, check_eval_overrides
    saved = ml_collections.ConfigDict(get_config("smoke").to_dict())
    apply_eval_overrides(saved, {"generation.max_new_tokens": 0, "data.max_utterances": 2,
                                 "response_model.dtype": "bfloat16"})
    assert saved.generation.max_new_tokens == 0 and saved.data.max_utterances == 2
    assert saved.response_model.dtype == "bfloat16"
    for bad in ("mcoe_model.lora.rank", "pdr.latent_dim", "system", "use_ugf", "stages.mcoe.steps",
                "data.soft_tokens_per_slot", "response_model.path"):
        with pytest.raises(ValueError, match="would change the trained model"):
            check_eval_overrides(saved, {bad: 1})
    with pytest.raises(ValueError, match="no such field"):
        check_eval_overrides(saved, {"generation.max_new_tokenz": 1})
