"""Figures for the evaluation report (PNG, matplotlib's Agg canvas, no pyplot state).

- t-SNE of latents coloured by emotion and by modality (the MERIA paper, figure 4);
- histograms + KDE of per-example polarity scores (the early-fusion paper, figures 4-5);
- training curves read back from TensorBoard event files (the trainer writes
  scalars with tensorboardX).
Each function returns the data it drew, so tests and reports can check numbers.
"""
from __future__ import annotations

import logging
import os
from typing import Mapping, Optional, Sequence

import numpy as np
from matplotlib.figure import Figure

log = logging.getLogger(__name__)

__all__ = ["tsne_embed", "plot_tsne", "plot_polarity_hist", "read_scalars", "plot_training_curves"]

_MARKERS = {"video": "x", "audio": "o", "text": "^"}  # the MERIA paper fig. 4b: x video, dot audio, triangle text
_OTHER_MARKERS = "sDv<>pP*h"


def _save(fig: Figure, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    fig.savefig(path, format="png", dpi=120, bbox_inches="tight")


def tsne_embed(latents: np.ndarray, seed: int = 0, perplexity: float = 30.0,
               max_iter: int = 1000) -> np.ndarray:
    """2-D t-SNE coordinates float[N, 2] (sklearn, PCA init); perplexity is capped at (N-1)/3."""
    from sklearn.manifold import TSNE
    x = np.asarray(latents, np.float64).reshape(len(latents), -1)
    if len(x) < 4:
        raise ValueError(f"t-SNE needs at least 4 points, got {len(x)}")
    perp = float(min(perplexity, max(1.0, (len(x) - 1) / 3)))
    return TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed,
                max_iter=max(250, max_iter)).fit_transform(x)


def _scatter(ax, xy: np.ndarray, colour_by: Sequence[str], marker_by: Optional[Sequence[str]],
             title: str) -> None:
    from matplotlib import colormaps
    names = list(dict.fromkeys(colour_by))
    cmap = colormaps["tab20" if len(names) > 10 else "tab10"]
    kinds = list(dict.fromkeys(marker_by)) if marker_by is not None else [None]
    markers = {k: _MARKERS.get(str(k), _OTHER_MARKERS[i % len(_OTHER_MARKERS)])
               for i, k in enumerate(kinds)}
    colour_arr = np.asarray(colour_by, dtype=object)
    marker_arr = np.asarray(marker_by, dtype=object) if marker_by is not None else None
    for ci, name in enumerate(names):
        labelled = False
        for kind in kinds:
            sel = colour_arr == name
            if marker_arr is not None:
                sel &= marker_arr == kind
            if sel.any():
                ax.scatter(xy[sel, 0], xy[sel, 1], s=14, color=cmap(ci % cmap.N),
                           marker=markers[kind] if kind is not None else "o",
                           label=None if labelled else str(name))
                labelled = True
    ax.set_title(title)
    ax.legend(fontsize=7, markerscale=1.2, loc="best")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_tsne(latents: np.ndarray, emotions: Sequence[str], path: str,
              modalities: Optional[Sequence[str]] = None, seed: int = 0,
              perplexity: float = 30.0, title: str = "t-SNE of latents",
              max_iter: int = 1000, group_name: str = "modality") -> np.ndarray:
    """t-SNE of `latents` (one row per point) saved to `path`; returns the float[N, 2] coordinates.

    Left panel: colour = emotion (marker = modality when given); right panel (only
    with `modalities`): colour = modality.  `modalities` may name any grouping (e.g. the
    latent subspace), titled `group_name`.
    """
    if len(emotions) != len(latents) or (modalities is not None and len(modalities) != len(latents)):
        raise ValueError("latents, emotions and modalities need one entry per point")
    xy = tsne_embed(latents, seed=seed, perplexity=perplexity, max_iter=max_iter)
    panels = 2 if modalities is not None else 1
    fig = Figure(figsize=(5.5 * panels, 5))
    axes = fig.subplots(1, panels, squeeze=False)[0]
    _scatter(axes[0], xy, [str(e) for e in emotions],
             None if modalities is None else [str(m) for m in modalities], f"{title}: emotion")
    if modalities is not None:
        _scatter(axes[1], xy, [str(m) for m in modalities], None, f"{title}: {group_name}")
    _save(fig, path)
    return xy


def plot_polarity_hist(scores: Mapping[str, Sequence[float]], path: str, bins: int = 20,
                       value_range: tuple[float, float] = (0.0, 1.0), kde: bool = True,
                       title: str = "Polarity scores") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """One histogram panel per score name (NaNs dropped), with a Gaussian KDE overlay.

    Returns {name: (counts, bin_edges)} exactly as drawn (numpy.histogram over
    `value_range` with `bins` bins; values outside the range are not counted).
    """
    names = list(scores)
    fig = Figure(figsize=(4.2 * max(1, len(names)), 3.6))
    axes = fig.subplots(1, max(1, len(names)), squeeze=False)[0]
    out = {}
    for ax, name in zip(axes, names):
        x = np.asarray(scores[name], np.float64)
        x = x[np.isfinite(x)]
        counts, edges = np.histogram(x, bins=bins, range=value_range)
        out[name] = (counts, edges)
        ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", alpha=0.6, edgecolor="k")
        if kde and len(x) > 1 and np.ptp(x) > 0:
            from scipy.stats import gaussian_kde
            grid = np.linspace(*value_range, 200)
            ax.plot(grid, gaussian_kde(x)(grid) * len(x) * (edges[1] - edges[0]), color="C3")
        ax.set_title(f"{name} (n={len(x)}, mean={x.mean() if len(x) else float('nan'):.3f})")
        ax.set_xlabel("score")
        ax.set_ylabel("count")
    fig.suptitle(title)
    _save(fig, path)
    return out


def read_scalars(logdir: str, tags: Optional[Sequence[str]] = None) -> dict[str, list[tuple[int, float]]]:
    """All scalar series under `logdir`: {tag: [(step, value), ...]} sorted by step.

    Every directory below `logdir` holding event files is a run; tags of runs in
    subdirectories are prefixed with the run's relative path ("eval/loss").
    Values are TensorBoard's stored float32.  `tags` keeps only those names.
    """
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator
    if not os.path.isdir(logdir):
        raise FileNotFoundError(f"{logdir} is not a directory of TensorBoard event files")
    out: dict[str, list[tuple[int, float]]] = {}
    for root, _, files in sorted(os.walk(logdir)):
        if not any("tfevents" in f for f in files):
            continue
        acc = EventAccumulator(root, size_guidance={SCALARS: 0})
        acc.Reload()
        run = os.path.relpath(root, logdir)
        for tag in acc.Tags().get("scalars", []):
            name = tag if run == "." else f"{run}/{tag}"
            if tags is not None and name not in tags:
                continue
            series = out.setdefault(name, [])
            series += [(int(e.step), float(e.value)) for e in acc.Scalars(tag)]
            series.sort(key=lambda p: p[0])
    if tags is not None:
        absent = [t for t in tags if t not in out]
        if absent:
            log.warning("no scalars %s under %s", absent, logdir)
    return out


def plot_training_curves(logdir: str, path: str, tags: Optional[Sequence[str]] = None,
                         title: str = "Training curves") -> dict[str, list[tuple[int, float]]]:
    """One panel per scalar tag (value vs. step); returns the series drawn (`read_scalars`)."""
    series = read_scalars(logdir, tags)
    if not series:
        raise ValueError(f"no scalar series under {logdir}" + (f" for tags {list(tags)}" if tags else ""))
    names = sorted(series)
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig = Figure(figsize=(4.5 * cols, 3.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, name in zip(axes, names):
        steps, values = zip(*series[name])
        ax.plot(steps, values, marker="." if len(steps) < 50 else None)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
    for ax in axes[len(names):]:
        ax.set_visible(False)
    fig.suptitle(title)
    _save(fig, path)
    return {n: series[n] for n in names}
