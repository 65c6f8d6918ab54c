"""Training metrics: clu aggregation, TensorBoard + console writers, analytic FLOPs and MFU.

clu's `metric_writers` package imports TensorFlow on import, so the writers here
follow its MetricWriter interface (write_scalars/write_texts/flush/close) on
tensorboardX instead (protobuf + numpy only): event files are written on any
machine and read by stock TensorBoard.  Aggregation uses clu.metrics.
"""
from __future__ import annotations

import logging
from typing import Mapping

import jax
import numpy as np
from clu import metrics as clu_metrics

log = logging.getLogger(__name__)

# Dense bf16 peak FLOP/s per device; MFU is left out where the device is not listed
# (CPU) unless `log.peak_flops` is set in the config.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "L4": 121e12,
              "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
              "TPU v6 lite": 918e12, "TPU v6e": 918e12}


def peak_flops(device: jax.Device, override: float = 0.0) -> float:
    if override:
        return override
    kind = getattr(device, "device_kind", "")
    return next((v for k, v in PEAK_FLOPS.items() if k.lower() in kind.lower()), 0.0)


class TensorboardWriter:
    """TensorBoard event files with tensorboardX (clu MetricWriter interface)."""

    def __init__(self, logdir: str):
        from tensorboardX import SummaryWriter
        self._writer = SummaryWriter(logdir, flush_secs=10)

    def write_summaries(self, step, values, metadata=None):
        for k, v in values.items():
            self._writer.add_scalar(k, float(np.asarray(v)), step)

    def write_scalars(self, step, scalars):
        for k, v in scalars.items():
            self._writer.add_scalar(k, float(np.asarray(v)), step)

    def write_texts(self, step, texts):
        for k, v in texts.items():
            self._writer.add_text(k, str(v), step)

    def write_hparams(self, hparams):
        self._writer.add_text("hparams", "\n".join(f"{k}: {v}" for k, v in sorted(hparams.items())), 0)

    def flush(self):
        self._writer.flush()

    def close(self):
        self._writer.close()


class LoggingWriter:
    """Scalars to the log (the console line is merg_jax.core.console.Progress's; this is the full record)."""

    def write_scalars(self, step, scalars):
        log.debug("step %d: %s", step, ", ".join(f"{k}={float(v):.6g}" for k, v in sorted(scalars.items())))

    def write_texts(self, step, texts):
        for k, v in texts.items():
            log.info("[%s] %s", k, v)

    def write_hparams(self, hparams):
        pass

    def flush(self):
        pass

    def close(self):
        pass


class MultiWriter:
    def __init__(self, writers: list):
        self.writers = writers

    def __getattr__(self, name):
        def call(*args, **kwargs):
            for w in self.writers:
                getattr(w, name)(*args, **kwargs)
        return call


def make_writer(logdir: str, *, enabled: bool = True) -> MultiWriter:
    """TensorBoard (main process only) + logging."""
    return MultiWriter([LoggingWriter()] + ([TensorboardWriter(logdir)] if enabled else []))


class Averager:
    """Means of per-step scalars between two console lines, with clu.metrics.Average."""

    AVERAGED = ("loss", "token_accuracy", "profile_accuracy", "grad_norm")

    def __init__(self):
        self._acc: dict[str, clu_metrics.Average] = {}

    def add(self, scalars: Mapping[str, float]) -> None:
        for k in self.AVERAGED:
            if k in scalars:
                one = clu_metrics.Average.from_model_output(np.float32(scalars[k]))
                self._acc[k] = one if k not in self._acc else self._acc[k].merge(one)

    def pop(self) -> dict[str, float]:
        """The means since the last pop; resets."""
        out = {k: float(v.compute()) for k, v in self._acc.items()}
        self._acc = {}
        return out


def llm_train_flops(num_params: int, num_layers: int, hidden: int, seq_len: int, tokens: int,
                    frozen_base: bool) -> float:
    """Analytic FLOPs of one step over `tokens` tokens (PaLM appendix B accounting).

    Matmuls cost 2·N per token forward; the backward pass costs 2·N for activation
    gradients plus 2·N for weight gradients, the latter skipped for a frozen base
    (LoRA), so 6·N (full) or 4·N (LoRA).  Attention scores add 12·L·d·S per token
    (6·L·d·S for the causal half is *not* subtracted, as in the usual MFU convention).
    """
    per_token = (4 if frozen_base else 6) * num_params + 12 * num_layers * hidden * seq_len
    return float(per_token) * tokens
