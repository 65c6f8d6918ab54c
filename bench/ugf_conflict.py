"""Can Uncertainty-Gated Fusion (the MERIA paper, eq. 6-8) see a conflicting clip?

    python bench/ugf_conflict.py [--seeds=0,1,2] [--betas=0.001,0.01,0.1,1.0] [--steps=1200]
        [--runs_dir=runs/ugf] [--data_dir=data/synthetic-conflict30]

For every KL weight β (eq. 1; 0.001 is our default: the paper gives no value) and seed it
trains MERIA's PDR stage alone (configs/meria.py:signal sizes) on the synthetic corpus with
30% conflicting clips, then reads every distinct utterance of the train split (probe fits) and of the valid + test
splits (scored) with the trained PDR and reports, by clip kind (agree; audio or video shows another
emotion; audio or video is noise):
  var_P_<m>      mean over dims of the private posterior variance σ²_P of modality m (eq. 6's input)
  w_<m>          UGF's gate weight of modality m (eq. 7)
  acc_<fusion>   held-out accuracy of a logistic-regression probe of the speaker's TRUE
                 emotion on the fused shared latent Z_S^F (fit on train utterances), for
                 fusion = ugf (eq. 7-8), mean (the "w/o UGF" ablation), and agree (ours: UGF
                 then `fusion.agreement_row_weights` pooling, dialogue level only)
and, per dialogue example (what the M-CoE LLM's fused soft prompt carries: Z_S^F pooled over
the example's history utterances), the same probe on the example's emotion.
The PDR has no parameter in the gate: ugf / mean / agree are read from the same trained PDR.
Runs are kept in RUNS_DIR/beta<β>/seed<s> (a finished one is not retrained); the table
is printed as markdown, mean ± std over seeds, with the example counts.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KINDS = ("agree", "audio_other", "audio_noise", "video_other", "video_noise")


def train_pdr(data_dir: str, workdir: str, seed: int, beta: float, steps: int) -> None:
    from configs.meria import get_config
    from merg_jax.systems.jobs import make_trainer
    if os.path.exists(os.path.join(workdir, "done.json")):
        return
    c = get_config("signal")
    c.seed = seed
    c.pdr.beta = beta
    c.stage_order = ("pdr",)
    c.stages.pdr.steps = steps
    c.data.data_dir = data_dir
    c.data.synthetic.conflict_rate = 0.3
    c.checkpoint.every_steps = steps
    c.log.eval_every = 10 ** 9
    summary = make_trainer(c, workdir).train()
    with open(os.path.join(workdir, "done.json"), "w") as f:
        json.dump({"loss": summary["stages"]["pdr"].get("loss")}, f)


def _kind(fact: dict) -> str:
    if not fact.get("conflict"):
        return "agree"
    shown = fact[f"{fact['conflict']}_emotion"]
    return f"{fact['conflict']}_{'noise' if shown == 'noise' else 'other'}"


def utterances(data_dir: str, split: str, facts: dict) -> dict:
    """Distinct history utterances of a split: features, masks, true coarse label, clip kind; and
    per example the row indices of its (last 4) history utterances with its label."""
    from input_pipeline.extract_io import iter_records
    from input_pipeline.schema import AVAMERG_COARSE, coarse_emotion
    index: dict[tuple, int] = {}
    feats: dict[str, list] = {m: [] for m in ("audio", "video", "text")}
    masks: dict[str, list] = {m: [] for m in feats}
    labels, kinds, examples = [], [], []
    for rec in iter_records(data_dir, split):
        rows = []
        for j, u in enumerate(rec["history_indices"]):
            key = (rec["conversation_id"], int(u))
            if key not in index:
                fact = facts[key]
                index[key] = len(labels)
                for m in feats:
                    feats[m].append(np.asarray(rec["features"][m][j], np.float32))
                    masks[m].append(bool(rec["feature_mask"][m][j]))
                labels.append(AVAMERG_COARSE.index(coarse_emotion(fact["true_emotion"])))
                kinds.append(_kind(fact))
            rows.append(index[key])
        examples.append((rows[-4:], int(rec["label"])))
    return {"feats": {m: np.stack(v) for m, v in feats.items()}, "masks": {m: np.asarray(v) for m, v in masks.items()},
            "label": np.asarray(labels), "kind": np.asarray(kinds), "examples": examples}


def _concat(parts: list[dict]) -> dict:
    """Two splits' utterance sets as one (example row indices shifted)."""
    out = {"feats": {m: np.concatenate([p["feats"][m] for p in parts]) for m in parts[0]["feats"]},
           "masks": {m: np.concatenate([p["masks"][m] for p in parts]) for m in parts[0]["masks"]},
           "label": np.concatenate([p["label"] for p in parts]), "kind": np.concatenate([p["kind"] for p in parts]),
           "examples": []}
    offset = 0
    for p in parts:
        out["examples"] += [([r + offset for r in rows], y) for rows, y in p["examples"]]
        offset += len(p["label"])
    return out


def read_out(model, data: dict) -> dict:
    """Per utterance: σ²_P per modality, gate weights, fused latents (ugf, mean), the a-v disagreement."""
    import jax.numpy as jnp

    from merg_jax.models import fusion
    feats = {m: jnp.asarray(x) for m, x in data["feats"].items()}
    feats = {m: model.norm(m, x) for m, x in feats.items()}
    masks = {m: jnp.asarray(x) for m, x in data["masks"].items()}
    out = model.pdr(feats, deterministic=True)
    ugf, mean = fusion.ugf(out, masks), fusion.ugf(out, masks, use_ugf=False)
    var = {m: np.asarray(jnp.mean(jnp.exp(out.latents[m]["P"].logvar), -1)) for m in ("audio", "video", "text")}
    return {"var": var, "w": np.asarray(ugf.weights), "ugf": np.asarray(ugf.shared), "mean": np.asarray(mean.shared),
            "disagree_av": np.asarray(ugf.conflict[:, 1]), "fusion_out": ugf, "mean_out": mean}


def _probe(xtr, ytr, xte, yte) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    scale = StandardScaler().fit(xtr)
    clf = LogisticRegression(max_iter=3000).fit(scale.transform(xtr), ytr)
    return float(clf.score(scale.transform(xte), yte)) if len(yte) else float("nan")


def _pooled(read: dict, data: dict, name: str, temperature: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Per example: Z_S^F pooled over its history rows by `fusion.pool_fusion` (the plain mean; for
    "agree" the agreement weights), from the UGF or the plain-mean fusion of each row."""
    import jax
    import jax.numpy as jnp

    from merg_jax.models import fusion
    per_row = read["fusion_out"] if name in ("ugf", "agree") else read["mean_out"]
    tau = temperature if name == "agree" else 0.0
    pool = jax.jit(lambda f, m: fusion.pool_fusion(f, m, tau).shared)
    width = max(len(rows) for rows, _ in data["examples"])
    idx = np.zeros((len(data["examples"]), width), np.int32)
    mask = np.zeros(idx.shape, bool)
    for i, (rows, _) in enumerate(data["examples"]):
        idx[i, :len(rows)], mask[i, :len(rows)] = rows, True
    gathered = fusion.FusionOutput(*(jnp.asarray(np.asarray(f)[idx]) for f in per_row))
    return np.asarray(pool(gathered, jnp.asarray(mask))), np.asarray([y for _, y in data["examples"]])


def measure(model, train: dict, test: dict, agree_temperature: float) -> dict[str, float]:
    rtr, rte = read_out(model, train), read_out(model, test)
    res: dict[str, float] = {}
    for kind in KINDS:
        sel = test["kind"] == kind
        res[f"n_{kind}"] = int(sel.sum())
        for i, m in enumerate(("audio", "video", "text")):
            res[f"var_P_{m}/{kind}"] = float(rte["var"][m][sel].mean()) if sel.any() else float("nan")
            res[f"w_{m}/{kind}"] = float(rte["w"][sel, i].mean()) if sel.any() else float("nan")
        res[f"disagree_av/{kind}"] = float(rte["disagree_av"][sel].mean()) if sel.any() else float("nan")
        for fusion_name in ("ugf", "mean"):
            res[f"acc_{fusion_name}/{kind}"] = _probe(rtr[fusion_name], train["label"], rte[fusion_name][sel],
                                                      test["label"][sel])
    for fusion_name in ("ugf", "mean"):
        res[f"acc_{fusion_name}/all"] = _probe(rtr[fusion_name], train["label"], rte[fusion_name], test["label"])
    for name in ("ugf", "mean", "agree"):
        xtr, ytr = _pooled(rtr, train, name, agree_temperature)
        xte, yte = _pooled(rte, test, name, agree_temperature)
        res[f"dialogue_acc_{name}"] = _probe(xtr, ytr, xte, yte)
    res["n_test_examples"] = len(test["examples"])
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs_dir", default=os.path.join(REPO, "runs", "ugf"))
    ap.add_argument("--data_dir", default="data/synthetic-conflict30")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--betas", default="0.001,0.01,0.1,1.0")
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--agree_temperature", type=float, default=4.0)
    args = ap.parse_args()
    os.chdir(REPO)
    sys.path.insert(0, REPO)
    from merg_jax.core import console
    from merg_jax.systems.workdir import load_workdir
    console.setup(os.path.join(args.runs_dir, "logs"), 0, "ugf_conflict")
    seeds = [int(s) for s in args.seeds.split(",")]
    betas = [float(b) for b in args.betas.split(",")]
    results: dict[float, list[dict]] = {}
    data = None
    for beta in betas:
        for seed in seeds:
            w = os.path.join(args.runs_dir, f"beta{beta:g}", f"seed{seed}")
            print(f"# beta {beta:g} seed {seed}: {w}", flush=True)
            train_pdr(args.data_dir, w, seed, beta, args.steps)
            if data is None:
                corpus = os.path.join(os.path.dirname(os.path.abspath(args.data_dir)),
                                      "corpus-" + os.path.basename(os.path.abspath(args.data_dir)))
                meta = json.load(open(os.path.join(corpus, "synthetic_meta.json")))
                facts = {(u["conversation_id"], int(u["index"])): u for u in meta["utterances"]}
                data = {"train": utterances(args.data_dir, "train", facts),
                        "test": _concat([utterances(args.data_dir, s, facts) for s in ("valid", "test")])}
            _, _, info = load_workdir(w, with_tokenizer=False)
            res = measure(info["model"], data["train"], data["test"], args.agree_temperature)
            res["final_pdr_loss"] = json.load(open(os.path.join(w, "done.json")))["loss"]
            results.setdefault(beta, []).append(res)
            with open(os.path.join(w, "ugf_measure.json"), "w") as f:
                json.dump(res, f, indent=1)
    print(report(results, data, seeds))
    return 0


def _ms(vals) -> str:
    v = np.asarray([x for x in vals if x is not None and np.isfinite(x)], np.float64)
    return "–" if not v.size else f"{v.mean():.3f} ± {v.std():.3f}"


def report(results: dict[float, list[dict]], data: dict, seeds: list[int]) -> str:
    first = next(iter(results.values()))[0]
    counts = ", ".join(f"{k} {first[f'n_{k}']}" for k in KINDS)
    lines = [f"PDR alone, {len(seeds)} seeds ({','.join(map(str, seeds))}); valid + test utterances by kind: {counts}; "
             f"{first['n_test_examples']} valid + test examples; mean ± std over seeds", ""]
    for title, cols in (("private variance and gate", [f"{p}_{m}" for p in ("var_P", "w") for m in ("audio", "video")]),
                        ("true-emotion probe on Z_S^F, per utterance", ["acc_ugf", "acc_mean"])):
        lines += [f"### {title}", "", "| β | kind | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
        for beta, runs in results.items():
            for kind in KINDS + (("all",) if title.startswith("true") else ()):
                cells = [_ms([r.get(f"{c}/{kind}") for r in runs]) for c in cols]
                lines.append(f"| {beta:g} | {kind} | " + " | ".join(cells) + " |")
        lines.append("")
    cols = ["dialogue_acc_ugf", "dialogue_acc_mean", "dialogue_acc_agree", "final_pdr_loss"]
    lines += ["### example-level fused soft prompt (Z_S^F pooled over the history)", "",
              "| β | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for beta, runs in results.items():
        lines.append(f"| {beta:g} | " + " | ".join(_ms([r[c] for r in runs]) for c in cols) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
