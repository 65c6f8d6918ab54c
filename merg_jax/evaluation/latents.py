"""What MERIA's PDR latents hold: t-SNE pictures (the MERIA paper, Fig. 4) and linear probes.

The MERIA paper shows the disentanglement only as pictures; a picture cannot fail, so next
to them we report a number that can: the held-out accuracy of a logistic-regression
probe that reads the emotion from each latent (fit on the train split, scored on
the evaluated split).  On the synthetic corpus the emotion lives in voice and face
only, so the audio/video shared latents and the fused Z_S^F should probe far above
chance, and the text shared latent near chance unless the corpus leaks emotion
into the words (`text_leak`).

Rows are utterances (history rows of the eval view); the label of a row is the
emotion it shows (`utterance_label`) where the data has one, else its dialogue's
emotion (`label`).
"""
from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# What each probe reads: (name, modality or None for fused, latent kind).
PROBES = (("shared_fused", None, "S"), ("shared_audio", "audio", "S"), ("shared_video", "video", "S"),
          ("shared_text", "text", "S"), ("private_audio", "audio", "P"), ("private_video", "video", "P"))


def label_names(data_dir: str) -> tuple[str, ...]:
    from input_pipeline import schema
    from input_pipeline.extract_io import read_manifest
    return schema.MELD_EMOTIONS if read_manifest(data_dir).get("dataset") == "meld" else schema.AVAMERG_COARSE


def collect(system, model, cfg, max_rows: int = 0) -> dict[str, Any]:
    """Per-utterance PDR posterior means over the view `cfg`, with labels and presence masks.

    Returns {"mu": {(modality, kind): float[N, L]}, "fused": float[N, L], "present":
    {modality: bool[N]}, "label": int[N]}; N counts rows with at least one modality."""
    import jax

    from input_pipeline.pipeline import make_iterator
    fn = jax.jit(lambda b: system.pdr_latents(model, b))
    mu: dict[tuple[str, str], list] = {}
    fused, labels, present = [], [], {}
    n = 0
    for batch in make_iterator(cfg):
        dev = {k: v for k, v in batch.items() if np.asarray(v).dtype.kind not in "USO"}
        out = jax.device_get(fn(dev))
        rows = out["row_mask"].reshape(-1)
        lab = np.asarray(batch["utterance_label"]).reshape(-1)
        per_example = np.repeat(np.asarray(batch["label"]).reshape(-1), lab.size // batch["label"].size)
        lab = np.where(lab >= 0, lab, per_example)
        for key, v in out["mu"].items():
            mu.setdefault(key, []).append(v.reshape(-1, v.shape[-1])[rows])
        for m, v in out["present"].items():
            present.setdefault(m, []).append(v.reshape(-1)[rows])
        fused.append(out["fused"].reshape(-1, out["fused"].shape[-1])[rows])
        labels.append(lab[rows])
        n += int(rows.sum())
        if max_rows and n >= max_rows:
            break
    if not labels:
        raise ValueError(f"no rows in {cfg.data_dir} split {cfg.split}")
    cat = lambda xs: np.concatenate(xs)[:max_rows or None]
    return {"mu": {k: cat(v) for k, v in mu.items()}, "fused": cat(fused),
            "present": {m: cat(v) for m, v in present.items()}, "label": cat(labels)}


def _probe_input(lat: dict, modality: str | None, kind: str) -> tuple[np.ndarray, np.ndarray]:
    if modality is None:
        return lat["fused"], np.ones(len(lat["label"]), bool)
    return lat["mu"][(modality, kind)], lat["present"][modality]


def probe_accuracy(train: dict, test: dict) -> dict[str, float]:
    """Held-out accuracy of a logistic-regression emotion probe on each latent in PROBES, and
    the majority-class rate of the test rows (`probe_chance`)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    out = {}
    for name, modality, kind in PROBES:
        xtr, ptr = _probe_input(train, modality, kind)
        xte, pte = _probe_input(test, modality, kind)
        ktr, kte = ptr & (train["label"] >= 0), pte & (test["label"] >= 0)
        if len(set(train["label"][ktr])) < 2 or not kte.any():
            continue
        scale = StandardScaler().fit(xtr[ktr])
        clf = LogisticRegression(max_iter=2000).fit(scale.transform(xtr[ktr]), train["label"][ktr])
        out[f"probe_{name}"] = float(clf.score(scale.transform(xte[kte]), test["label"][kte]))
    known = test["label"][test["label"] >= 0]
    if known.size:
        out["probe_chance"] = float(np.bincount(known).max() / known.size)
    return out


def plot(lat: dict, names: tuple[str, ...], output_dir: str, max_points: int = 600, seed: int = 0) -> list[str]:
    """The MERIA paper Fig. 4: (b) shared latents of the three modalities coloured by emotion and by
    modality; (a) the video S / P / I latents side by side.  Returns the files written."""
    from merg_jax.evaluation import plots
    rng = np.random.default_rng(seed)
    label = np.asarray([names[i] if 0 <= i < len(names) else "unknown" for i in lat["label"]], object)
    written = []

    def pick(n: int) -> np.ndarray:
        return np.sort(rng.choice(n, size=min(n, max_points), replace=False))

    xs, emo, mod = [], [], []
    for m in ("audio", "video", "text"):
        keep = np.flatnonzero(lat["present"][m])
        keep = keep[pick(len(keep))] if len(keep) > max_points // 3 else keep
        xs.append(lat["mu"][(m, "S")][keep])
        emo += list(label[keep])
        mod += [m] * len(keep)
    if sum(len(x) for x in xs) >= 4:
        path = os.path.join(output_dir, "tsne_shared.png")
        plots.plot_tsne(np.concatenate(xs), emo, path, modalities=mod, seed=seed,
                        title="PDR shared latents Z_S")
        written.append(path)
    video = np.flatnonzero(lat["present"]["video"])
    video = video[pick(len(video))] if len(video) > max_points // 3 else video
    if len(video) >= 2:
        kinds = ("S", "P", "I")
        x = np.concatenate([lat["mu"][("video", k)][video] for k in kinds])
        path = os.path.join(output_dir, "tsne_video_subspaces.png")
        plots.plot_tsne(x, list(label[video]) * len(kinds), path,
                        modalities=[f"Z_{k}^V" for k in kinds for _ in video], seed=seed,
                        title="PDR video latents", group_name="subspace")
        written.append(path)
    return written
