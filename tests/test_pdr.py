"""MERIA PDR + UGF: loss terms and gate equations against hand-computed numbers, masks, learning."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from merg_jax.core.sharding import LOGICAL_RULES
from merg_jax.models import fusion as F
from merg_jax.models.pdr import (
    MODALITIES,
    PDR,
    Latent,
    PDRConfig,
    PDROutput,
    batch_hard_triplet,
    kl_standard_normal,
    masked_cross_entropy,
    pdr_losses,
    reparameterize,
)

TINY = dict(feature_dims={"audio": 6, "video": 5, "text": 7}, latent_dim=3, hidden_dim=8,
            num_hidden_layers=1, profile_classes={"age": 3, "gender": 2})


def _lat(mu, logvar=None) -> Latent:
    mu = jnp.asarray(mu, jnp.float32)
    logvar = jnp.zeros_like(mu) if logvar is None else jnp.asarray(logvar, jnp.float32)
    return Latent(mu, logvar, mu)  # z = μ, as deterministic=True gives


def _hand_output() -> tuple[PDROutput, dict]:
    """2 rows, 2-d latents; the numbers in the tests below are worked out by hand from these."""
    lat = {
        "audio": {"S": _lat([[1, 0], [0, 2]], [[math.log(2), 0], [0, 0]]), "P": _lat([[0, 1], [1, 1]]),
                  "I": _lat([[2, 0], [0, 0]])},
        "video": {"S": _lat([[1, 1], [0, 0]]), "P": _lat([[1, 0], [0, 1]]), "I": _lat([[0, 1], [1, 0]])},
        "text": {"S": _lat([[0, 0], [0, 2]]), "P": _lat([[3, 0], [1, 0]])},
    }
    recon = {"audio": jnp.array([[1., 1], [3, 3]]), "video": jnp.array([[2., 0], [0, 0]]),
             "text": jnp.ones((2, 2))}
    feats = {"audio": jnp.array([[1., 2], [3, 4]]), "video": jnp.zeros((2, 2)), "text": jnp.zeros((2, 2))}
    return PDROutput(lat, recon, {"audio": {}, "video": {}}), feats


def test_config_validation_says_what_to_change():
    with pytest.raises(ValueError, match="exactly the keys"):
        PDRConfig(feature_dims={"audio": 4, "text": 4})
    with pytest.raises(ValueError, match="dropout"):
        PDRConfig(dropout=1.0)
    with pytest.raises(ValueError, match="alpha"):
        PDRConfig(alpha=-1.0)
    with pytest.raises(ValueError, match="2\\+ classes"):
        PDRConfig(profile_classes={"age": 1})
    with pytest.raises(ValueError, match="hidden size"):
        F.ProjectorConfig(d_model=0)


def test_reparameterized_sample_gradients():
    mu = jnp.array([0.3, -1.0, 2.0])
    logvar = jnp.array([0.0, math.log(4.0), -2.0])
    key = jax.random.key(7)
    eps = jax.random.normal(key, mu.shape, mu.dtype)
    z = reparameterize(mu, logvar, key)
    np.testing.assert_allclose(z, mu + np.exp(0.5 * np.asarray(logvar)) * eps, rtol=1e-6)
    jac_mu = jax.jacfwd(reparameterize, argnums=0)(mu, logvar, key)
    jac_lv = jax.jacfwd(reparameterize, argnums=1)(mu, logvar, key)
    np.testing.assert_allclose(jac_mu, np.eye(3), atol=1e-7)  # dz/dμ = 1
    sigma = np.exp(0.5 * np.asarray(logvar))
    np.testing.assert_allclose(jac_lv, np.diag(0.5 * sigma * np.asarray(eps)), rtol=1e-6, atol=1e-7)


def test_kl_closed_form_and_monte_carlo():
    mu = np.array([1.0, 0.0, -0.5])
    logvar = np.array([math.log(2.0), 0.0, math.log(0.25)])
    # By hand: ½ Σ (μ² + σ² − 1 − log σ²) = ½[(1 + 2 − 1 − ln 2) + 0 + (0.25 + 0.25 − 1 − ln 0.25)]
    hand = 0.5 * ((2.0 - math.log(2.0)) + (-0.5 + math.log(4.0)))
    np.testing.assert_allclose(kl_standard_normal(jnp.asarray(mu), jnp.asarray(logvar)), hand, rtol=1e-6)
    # Monte Carlo: E_q[log q(z) − log p(z)]
    rng = np.random.default_rng(0)
    sigma = np.exp(0.5 * logvar)
    eps = rng.standard_normal((400_000, 3))
    z = mu + sigma * eps
    log_q = -0.5 * (eps ** 2 + logvar + math.log(2 * math.pi))
    log_p = -0.5 * (z ** 2 + math.log(2 * math.pi))
    mc = np.mean(np.sum(log_q - log_p, axis=-1))
    assert abs(mc - hand) < 0.01, (mc, hand)


def test_pdr_loss_terms_by_hand():
    out, feats = _hand_output()
    cfg = PDRConfig(feature_dims={"audio": 2, "video": 2, "text": 2}, beta=0.5, alpha=0.25, gamma=2.0)
    total, t = pdr_losses(cfg, out, feats)
    # recon (per-element MSE, mean over rows): audio (½ + ½)/2, video (2 + 0)/2, text 1
    np.testing.assert_allclose([t["recon/audio"], t["recon/video"], t["recon/text"], t["recon"]],
                               [0.5, 1.0, 1.0, 2.5], rtol=1e-6)
    # KL = ½‖μ‖² where log σ² = 0; audio S row 0 has σ² = 2 on dim 0: ½(1 + 2 − 1 − ln 2)
    kl_audio = (0.5 * (2 - math.log(2)) + 2.0) / 2 + (0.5 + 1.0) / 2 + (2.0 + 0.0) / 2
    np.testing.assert_allclose([t["kl/audio"], t["kl/video"], t["kl/text"]], [kl_audio, 1.5, 3.5], rtol=1e-6)
    # align, unordered pairs (a,v): (1 + 4)/2, (a,t): (1 + 0)/2, (v,t): (2 + 4)/2 -> 6; ordered (eq. 3) = 12
    np.testing.assert_allclose(t["align"], 12.0, rtol=1e-6)
    # ortho per row: audio (S·I)² = 4 then (S·P)² = 4 -> 4; video 1 + 1 then 0 -> 1; text 0 -> 5
    np.testing.assert_allclose(t["ortho"], 5.0, rtol=1e-6)
    assert float(t["triplet"]) == 0.0 and float(t["cls"]) == 0.0  # no speaker ids / labels given
    np.testing.assert_allclose(total, 2.5 + 0.5 * (kl_audio + 5.0) + 0.25 * 12 + 2.0 * 5, rtol=1e-6)
    np.testing.assert_allclose(t["total"], total)

    # video absent on row 1: its terms use row 0 only, pairs with video use row 0 only
    _, tm = pdr_losses(cfg, out, feats, masks={"video": jnp.array([True, False])})
    # video row 0: recon 2; KL ½(2) + ½(1) + ½(1) = 2
    np.testing.assert_allclose([tm["recon/video"], tm["kl/video"]], [2.0, 2.0], rtol=1e-6)
    np.testing.assert_allclose(tm["align"], 2 * (1.0 + 0.5 + 2.0), rtol=1e-6)
    np.testing.assert_allclose(tm["ortho"], 4.0 + 2.0 + 0.0, rtol=1e-6)
    for k in ("recon/audio", "recon/text", "kl/audio", "kl/text"):
        np.testing.assert_allclose(tm[k], t[k])
    # nothing present anywhere: every mean guards its zero count
    _, t0 = pdr_losses(cfg, out, feats, masks={m: jnp.zeros(2, bool) for m in MODALITIES})
    assert all(float(v) == 0.0 for v in t0.values())


def test_batch_hard_triplet_by_hand():
    z = jnp.array([[0., 0], [3, 0], [0, 4], [1, 0], [10, 10], [0, 0.5], [3, 0.1]])
    spk = jnp.array([0, 0, 1, 1, 2, -1, 0])
    valid = jnp.array([True, True, True, True, True, True, False]) & (spk >= 0)
    # anchors 0..3 (row 4 has no positive; row 5 unknown speaker; row 6 absent):
    # 0: pos 3, neg min(4, 1) -> 3; 1: 3 − 2 + 1 = 2; 2: √17 − 4 + 1; 3: √17 − 1 + 1
    hand = (3 + 2 + (math.sqrt(17) - 3) + math.sqrt(17)) / 4
    loss_and_grad = jax.jit(jax.value_and_grad(lambda z, spk: batch_hard_triplet(z, spk, valid, 1.0)))
    value, g = loss_and_grad(z, spk)
    np.testing.assert_allclose(value, hand, rtol=1e-5)
    assert float(loss_and_grad(z, jnp.zeros(7, spk.dtype))[0]) == 0.0  # no negatives anywhere
    assert np.all(np.isfinite(g)) and np.all(np.asarray(g)[4:] == 0.0)


def test_masked_cross_entropy_by_hand():
    logits = jnp.array([[0.0, math.log(3.0)], [5.0, 0.0], [0.0, 0.0], [0.0, 9.0]])
    labels = jnp.array([1, -1, 0, 0])
    mask = jnp.array([True, True, True, False])
    np.testing.assert_allclose(masked_cross_entropy(logits, labels, mask),
                               (-math.log(0.75) + math.log(2.0)) / 2, rtol=1e-6)


def test_ugf_equations_by_hand():
    lv = lambda *v: [list(v), list(v)]
    lat = {"audio": {"S": _lat([[1, 0], [1, 0]]), "P": _lat([[0, 0]] * 2, lv(0.0, 0.0)),
                     "I": _lat([[1, 2], [1, 2]])},
           "video": {"S": _lat([[0, 1], [0, 1]]), "P": _lat([[5, 5]] * 2, lv(math.log(.5), math.log(.5))),
                     "I": _lat([[3, 4], [3, 4]])},
           "text": {"S": _lat([[1, 1], [1, 1]]), "P": _lat([[0, 0]] * 2, lv(math.log(4.0), 0.0))}}
    out = PDROutput(lat, {}, {})
    masks = {"video": jnp.array([True, False])}
    f = F.ugf(out, masks, eps=0.0)
    # T = 1/mean σ²_P: audio 1, video 1/0.5 = 2, text 1/((4 + 1)/2) = 0.4
    np.testing.assert_allclose(f.certainty, [[1.0, 2.0, 0.4], [1.0, 0.0, 0.4]], rtol=1e-6)
    e = np.exp([1.0, 2.0, 0.4])
    w0 = e / e.sum()                                   # [0.2344, 0.6370, 0.1286]
    w1 = np.array([e[0], 0.0, e[2]]) / (e[0] + e[2])   # video masked before the softmax
    np.testing.assert_allclose(f.weights, [w0, w1], rtol=1e-5)
    mu_s = np.array([[1, 0], [0, 1], [1, 1]], np.float64)
    np.testing.assert_allclose(f.shared, [w0 @ mu_s, [1.0, w1[2]]], rtol=1e-5)
    np.testing.assert_allclose(f.identity, [[1, 2, 3, 4], [1, 2, 0, 0]])
    np.testing.assert_allclose(f.private_video, [[5, 5], [0, 0]])
    # conflict: Σ w‖μ_S − Z_S^F‖², then 1 − cos over (a,v), (a,t), (v,t): 1, 1 − 1/√2, 1 − 1/√2
    disp0 = sum(w0[i] * np.sum((mu_s[i] - w0 @ mu_s) ** 2) for i in range(3))
    disp1 = sum(w1[i] * np.sum((mu_s[i] - w1 @ mu_s) ** 2) for i in (0, 2))
    c = 1 - 1 / math.sqrt(2)
    np.testing.assert_allclose(f.conflict, [[disp0, 1.0, c, c], [disp1, 0.0, c, 0.0]], rtol=1e-5, atol=1e-6)
    # "w/o UGF" ablation: plain mean over present modalities
    plain = F.ugf(out, masks, use_ugf=False)
    np.testing.assert_allclose(plain.shared, [[2 / 3, 2 / 3], [1.0, 0.5]], rtol=1e-6)
    np.testing.assert_allclose(plain.weights, [[1 / 3] * 3, [0.5, 0.0, 0.5]], rtol=1e-6)
    none = F.ugf(out, {m: jnp.zeros(2, bool) for m in MODALITIES})
    assert np.all(np.asarray(none.weights) == 0) and np.all(np.isfinite(none.conflict))


def test_pdr_forward_shapes_modes_and_sharding_names():
    cfg = PDRConfig(**TINY)
    model = PDR(cfg, rngs=nnx.Rngs(0))
    feats = {m: jnp.ones((2, 4, d)) for m, d in cfg.feature_dims.items()}
    graph, state = nnx.split(model)
    fwd = jax.jit(lambda st, f, key: nnx.merge(graph, st)(f, key=key))
    out = fwd(state, feats, jax.random.key(0))
    assert set(out.latents["text"]) == {"S", "P"} and set(out.latents["audio"]) == {"S", "P", "I"}
    assert out.latents["video"]["I"].z.shape == (2, 4, 3) and out.recon["text"].shape == (2, 4, 7)
    assert out.profile_logits["audio"]["age"].shape == (2, 4, 3)
    det = jax.jit(lambda st, f: nnx.merge(graph, st)(f, deterministic=True))(state, feats)
    np.testing.assert_array_equal(det.latents["audio"]["S"].z, det.latents["audio"]["S"].mu)
    assert not np.allclose(out.latents["audio"]["S"].z, out.latents["audio"]["S"].mu)
    with pytest.raises(ValueError, match="key="):
        model(feats)
    with pytest.raises(ValueError, match="feature_dims"):
        model({**feats, "text": jnp.ones((2, 4, 3))}, deterministic=True)
    known = {name for name, _ in LOGICAL_RULES}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        names = var.get_metadata()["out_sharding"]
        assert len(names) == var.get_value().ndim and set(names) - {None} <= known, path
    # dialogue-level soft prompts: fuse per utterance, pool over present utterances, project
    pcfg = F.ProjectorConfig(d_model=16)
    pgraph, pstate = nnx.split(F.MeriaProjectors(pcfg, cfg.latent_dim, rngs=nnx.Rngs(1)))

    @jax.jit
    def prompts(det, pstate):
        f = F.pool_fusion(F.ugf(det), jnp.array([[True] * 4, [True, True, False, False]]))
        proj = nnx.merge(pgraph, pstate)
        return proj(f), proj.prompt(f)

    per, prompt = prompts(det, pstate)
    assert {s: per[s].shape for s in F.SIGNALS} == {s: (2, pcfg.tokens[s], 16) for s in F.SIGNALS}
    assert prompt.shape == (2, sum(pcfg.tokens.values()), 16)


def test_pool_rows():
    x = jnp.array([[[1.0, 2], [3, 4], [100, 100]], [[5, 6], [7, 8], [9, 10]]])
    mask = jnp.array([[True, True, False], [False, False, False]])
    np.testing.assert_allclose(F.pool_rows(x, mask), [[2.0, 3.0], [0.0, 0.0]])


def test_absent_modality_changes_nothing_else():
    cfg = PDRConfig(**{**TINY, "dropout": 0.2})
    model = PDR(cfg, rngs=nnx.Rngs(3))
    rng = np.random.default_rng(0)
    feats = {m: jnp.asarray(rng.normal(size=(6, d)), jnp.float32) for m, d in cfg.feature_dims.items()}
    masks = {"video": jnp.array([True, True, False, True, False, True])}
    spk = jnp.array([0, 0, 1, 1, 2, 2])
    labels = {"age": jnp.array([0, 1, 2, -1, 0, 1]), "gender": jnp.array([1, 0, 1, 0, -1, 0])}

    graph, state = nnx.split(model)

    @jax.jit
    def run(video):
        def total(v):
            m, f = nnx.merge(graph, state), {**feats, "video": v}
            terms = pdr_losses(cfg, m(f, key=jax.random.key(1)), f, masks, spk, labels)[1]
            return terms["total"], (terms, F.ugf(m(f, deterministic=True), masks))
        (_, aux), grad = jax.value_and_grad(total, has_aux=True)(video)
        return aux, grad

    (terms, fus), grad = run(feats["video"])
    assert np.all(np.asarray(fus.weights)[[2, 4], 1] == 0.0)
    assert np.all(np.asarray(grad)[[2, 4]] == 0.0) and np.any(np.asarray(grad)[[0, 1, 3, 5]] != 0.0)
    junk = feats["video"].at[jnp.array([2, 4])].set(1e3)
    (terms2, fus2), _ = run(junk)
    for k in terms:
        np.testing.assert_allclose(terms2[k], terms[k], rtol=1e-6, err_msg=k)
    for a, b in zip(fus, fus2):
        np.testing.assert_allclose(a, b, rtol=1e-6)

# ----------------------------------------------------------------------------- learning

def _turns(n: int = 200, k: int = 4, p: int = 4, speakers: int = 8, seed: int = 0):
    """Each turn has an emotion e shared by all modalities, modality-private noise, and a
    speaker identity in audio and video; features are standardised per dimension."""
    rng = np.random.default_rng(seed)
    e = rng.normal(size=(n, k))
    spk = rng.integers(0, speakers, n)
    ident = rng.normal(size=(speakers, 3))
    dims = {"audio": 12, "video": 10, "text": 16}
    feats = {}
    for m, d in dims.items():
        x = e @ rng.normal(size=(k, d)) + rng.normal(size=(n, p)) @ rng.normal(size=(p, d))
        if m != "text":
            x += ident[spk] @ rng.normal(size=(3, d))
        x += 0.05 * rng.normal(size=(n, d))
        feats[m] = jnp.asarray((x - x.mean(0)) / x.std(0), jnp.float32)
    return feats, jnp.asarray(spk), dims


def _same_over_diff_turn(mu_s: list[np.ndarray]) -> float:
    """Mean cross-modal ‖μ_S^M − μ_S^N‖ within a turn over the same between different turns."""
    same, diff = [], []
    for i in range(3):
        for j in range(i + 1, 3):
            d = np.linalg.norm(mu_s[i][:, None] - mu_s[j][None], axis=-1)
            same.append(np.diag(d).mean())
            diff.append(d[~np.eye(len(d), dtype=bool)].mean())
    return float(np.mean(same) / np.mean(diff))


def test_alignment_learns_shared_emotion_space():
    """Same-turn shared latents end up close across modalities only when α > 0."""
    feats, spk, dims = _turns()
    # α = 0 in the config; the step adds α·align with α traced, so both runs share one compile.
    cfg = PDRConfig(feature_dims=dims, latent_dim=4, hidden_dim=32, num_hidden_layers=1, dropout=0.0,
                    beta=0.01, alpha=0.0, gamma=0.01, delta1=0.1, delta2=0.1, profile_classes={"group": 2})
    graph, init_params = nnx.split(PDR(cfg, rngs=nnx.Rngs(0)))
    opt = optax.adam(1e-2)
    labels = {"group": spk % 2}

    @jax.jit
    def mu_s(params):
        out = nnx.merge(graph, params)(feats, deterministic=True)
        return [out.latents[m]["S"].mu for m in MODALITIES]

    @jax.jit
    def step(params, opt_state, key, alpha):
        def loss(p):
            total, terms = pdr_losses(cfg, nnx.merge(graph, p)(feats, key=key), feats, None, spk, labels)
            return total + alpha * terms["align"]
        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    ratios = {"init": _same_over_diff_turn([np.asarray(x) for x in mu_s(init_params)])}
    for alpha in (1.0, 0.0):
        params, opt_state = init_params, opt.init(init_params)
        for i in range(250):
            params, opt_state, value = step(params, opt_state, jax.random.key(i), alpha)
        assert np.isfinite(float(value))
        ratios[alpha] = _same_over_diff_turn([np.asarray(x) for x in mu_s(params)])
    # Seed 0 on CPU: ≈ 0.97 at init, ≈ 0.25 with α = 1, ≈ 1.0 with α = 0.
    assert ratios[1.0] < 0.5, ratios
    assert ratios["init"] > 0.8 and ratios[0.0] > 0.8, ratios


def test_default_profile_classes_match_the_schema():
    """The PDR's default class heads are the AvaMERG profile vocabularies' sizes."""
    from input_pipeline import schema
    from merg_jax.models.pdr import PDRConfig
    cfg = PDRConfig(feature_dims={"audio": 2, "video": 2, "text": 2})
    assert dict(cfg.profile_classes) == {"age": len(schema.PROFILE_AGES), "gender": len(schema.PROFILE_GENDERS),
                                         "timbre": len(schema.PROFILE_TIMBRES)}



def test_identity_terms_carry_delta1_and_delta2():
    """Eq. 5 with speakers and profile labels known: δ1 weighs the triplet, δ2 the profile CE
    (a swap of the two weights, or a term dropped, changes `identity` and `total`)."""
    out, feats = _hand_output()
    logits = {"audio": {"age": jnp.array([[0.0, math.log(3.0)], [2.0, 0.0]])},
              "video": {"age": jnp.array([[1.0, 1.0], [0.0, 0.0]])}}
    out = PDROutput(out.latents, out.recon, logits)
    base = PDRConfig(feature_dims={"audio": 2, "video": 2, "text": 2}, beta=0.5, alpha=0.25, gamma=2.0,
                     profile_classes={"age": 2})
    _, t0 = pdr_losses(base, out, feats)  # no identity supervision
    # audio: -log 3/4 and -log e²/(e²+1); video: uniform logits, log 2 per row
    cls_hand = (-math.log(0.75) - math.log(math.exp(2) / (math.exp(2) + 1))) / 2 + math.log(2.0)
    cfg = PDRConfig(feature_dims=base.feature_dims, beta=0.5, alpha=0.25, gamma=2.0, delta1=2.0, delta2=5.0,
                    profile_classes={"age": 2})
    # one row per speaker: no positive pair, so the triplet is 0 and only δ2 · cls remains
    total, t = pdr_losses(cfg, out, feats, speaker_ids=jnp.array([0, 1]), profile_labels={"age": jnp.array([1, 0])})
    np.testing.assert_allclose([t["triplet"], t["cls"]], [0.0, cls_hand], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(total, t0["total"] + 5.0 * cls_hand, rtol=1e-5)

    # three rows, speakers (0, 0, 1): a triplet that is not 0, so δ1 and δ2 are told apart
    z_a = jnp.array([[0.0, 0.0], [3.0, 0.0], [0.0, 1.0]])
    z_v = jnp.array([[0.0, 0.0], [0.0, 2.0], [0.0, 5.0]])
    lat3 = {m: {k: _lat(jnp.zeros((3, 2))) for k in ("S", "P", "I")} for m in ("audio", "video")}
    lat3["audio"]["I"], lat3["video"]["I"] = _lat(z_a), _lat(z_v)
    lat3["text"] = {k: _lat(jnp.zeros((3, 2))) for k in ("S", "P")}
    zeros = {m: jnp.zeros((3, 2)) for m in MODALITIES}
    out3 = PDROutput(lat3, zeros, {"audio": {"age": jnp.zeros((3, 2))}, "video": {"age": jnp.zeros((3, 2))}})
    # audio: anchor 0: pos 3, neg 1 -> 3; anchor 1: pos 3, neg √10 -> 3 - √10 + 1; anchor 2: no positive
    # video: anchor 0: pos 2, neg 5 -> 0 (hinge); anchor 1: pos 2, neg 3 -> 0
    trip_hand = (3.0 + (4.0 - math.sqrt(10.0))) / 2 + 0.0
    cls3 = 2 * math.log(2.0)  # uniform logits, audio + video
    got = []
    for d1, d2 in ((2.0, 5.0), (5.0, 2.0)):
        cfg = PDRConfig(feature_dims=base.feature_dims, delta1=d1, delta2=d2, profile_classes={"age": 2})
        _, t = pdr_losses(cfg, out3, zeros, speaker_ids=jnp.array([0, 0, 1]),
                          profile_labels={"age": jnp.array([0, 1, 0])})
        np.testing.assert_allclose([t["triplet"], t["cls"]], [trip_hand, cls3], rtol=1e-5)
        np.testing.assert_allclose(t["identity"], d1 * trip_hand + d2 * cls3, rtol=1e-5)
        got.append(float(t["identity"]))
    assert abs(got[0] - got[1]) > 0.1


def test_training_mode_decodes_the_sampled_latents():
    """deterministic=False: every Z is μ + σ ε (not μ), and the decoders read those samples."""
    cfg = PDRConfig(**dict(TINY, dropout=0.0))
    model = PDR(cfg, rngs=nnx.Rngs(0))
    feats = {m: jax.random.normal(jax.random.key(i), (4, d)) for i, (m, d) in enumerate(cfg.feature_dims.items())}
    det = model(feats, deterministic=True)
    out = model(feats, key=jax.random.key(7), deterministic=False)
    for m in MODALITIES:
        for k, lat in out.latents[m].items():
            np.testing.assert_allclose(lat.mu, det.latents[m][k].mu, rtol=1e-6)  # no dropout: same posterior
            assert float(jnp.max(jnp.abs(lat.z - lat.mu))) > 1e-3, (m, k)  # a sample, not the mean
            eps = (lat.z - lat.mu) / jnp.exp(0.5 * lat.logvar)
            assert 0.3 < float(jnp.std(eps)) < 3.0  # a standard-normal draw scaled by σ
        z = jnp.concatenate([out.latents[m][k].z for k in out.latents[m]], -1)
        np.testing.assert_allclose(out.recon[m], model.decoders[m](z, None), rtol=1e-5, atol=1e-6)
        assert not np.allclose(out.recon[m], det.recon[m], atol=1e-4)


def test_agreement_pooling_by_hand():
    """Our agreement-weighted pooling: softmax_u(-τ (1 - cos(μ_S^A, μ_S^V))) over present rows;
    τ = 0 is the paper's plain mean."""
    lat = {"audio": {"S": _lat([[1, 0], [1, 0], [0, 1]]), "P": _lat(jnp.zeros((3, 2))), "I": _lat(jnp.zeros((3, 2)))},
           "video": {"S": _lat([[1, 0], [0, 1], [0, 1]]), "P": _lat(jnp.zeros((3, 2))), "I": _lat(jnp.zeros((3, 2)))},
           "text": {"S": _lat([[1, 1], [1, 1], [1, 1]]), "P": _lat(jnp.zeros((3, 2)))}}
    f = F.ugf(PDROutput(lat, {}, {}), None, use_ugf=False)
    rows = jnp.array([True, True, False])
    # row 0 agrees (1 - cos = 0), row 1 disagrees (1 - cos = 1), row 2 absent
    w = F.agreement_row_weights(f, rows, 2.0)
    np.testing.assert_allclose(w, [1 / (1 + math.exp(-2)), math.exp(-2) / (1 + math.exp(-2)), 0.0], rtol=1e-6)
    pooled = F.pool_fusion(f, rows, 2.0)
    np.testing.assert_allclose(pooled.shared, w[0] * np.asarray(f.shared[0]) + w[1] * np.asarray(f.shared[1]),
                               rtol=1e-6)
    np.testing.assert_allclose(F.pool_fusion(f, rows).shared, (np.asarray(f.shared[0]) + np.asarray(f.shared[1])) / 2,
                               rtol=1e-6)
