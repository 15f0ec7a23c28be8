"""Training of the windowed multivariate autoencoder (:mod:`otelai.detectors.multivariate`).

Audibert et al., "USAD: UnSupervised Anomaly Detection on Multivariate Time Series" (KDD 2020):
a dense autoencoder over flattened sliding windows of all of a server's metrics. One network is
shared by every server of the data set (so a server it has never seen is still scored); what is
server-specific is the calibration: per metric, the inverse of its mean squared error on that
server's held-out normal data, and the score threshold, a high quantile of the server's scores
on that held-out data (inductive conformal calibration: Vovk, Gammerman & Shafer, *Algorithmic
Learning in a Random World*, 2005). No label is ever used.

PyTorch is imported inside the functions (the ``train`` extra); the trained network, with the
min-max normalisation in front of it, is exported with the TorchScript ONNX exporter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from otelai.detectors.multivariate import sliding_windows
from otelai.models.training.onnx_export import export_module

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class WindowAutoencoderSettings:
    """Hyperparameters of the windowed autoencoder and its calibration.

    Attributes
    ----------
    window
        Steps per window (20 five-minute steps = 100 minutes of ASD).
    hidden, latent
        Widths of the hidden and bottleneck layers.
    epochs, batch_size, learning_rate
        Adam training; ``max_steps`` caps the optimiser steps whatever the data size.
    clip
        Normalised values are clipped to ``[-clip, 1 + clip]`` (min-max of the training data is
        ``[0, 1]``), so one wild value cannot dominate a score without bound.
    quantile
        The threshold is this quantile of held-out normal scores.
    error_floor
        A metric's error scale is at least this share of the mean over metrics: a metric that
        never moved in training must not make any later wobble an anomaly.
    """

    window: int = 20
    hidden: int = 128
    latent: int = 16
    epochs: int = 10
    batch_size: int = 256
    learning_rate: float = 1e-3
    max_steps: int = 20_000
    clip: float = 3.0
    quantile: float = 0.995
    error_floor: float = 0.05


@dataclass(frozen=True, slots=True)
class TrainedWindowAutoencoder:
    """A trained network: its ONNX graph, normalisation, and the torch module (for tests)."""

    onnx: bytes
    offset: F32
    scale: F32
    settings: WindowAutoencoderSettings
    final_loss: float
    module: Any


@dataclass(frozen=True, slots=True)
class ResourceCalibration:
    """What makes the shared network's errors one server's score."""

    weights: F32  # per metric
    threshold: float
    scores: F64  # of the held-out rows, for the bundle's ECDF quantiles


def _module(width: int, settings: WindowAutoencoderSettings, offset: F32, scale: F32) -> Any:
    import torch
    from torch import nn

    flat = settings.window * width

    class WindowAutoencoder(nn.Module):
        """Raw flattened windows in, per-metric squared error of the last step out."""

        offset: torch.Tensor
        inv_scale: torch.Tensor

        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("offset", torch.tensor(np.tile(offset, settings.window)))
            self.register_buffer("inv_scale", torch.tensor(np.tile(1.0 / scale, settings.window)))
            self.encoder = nn.Sequential(
                nn.Linear(flat, settings.hidden), nn.ReLU(), nn.Linear(settings.hidden, settings.latent)
            )
            self.decoder = nn.Sequential(
                nn.Linear(settings.latent, settings.hidden), nn.ReLU(), nn.Linear(settings.hidden, flat)
            )

        def normalise(self, x: torch.Tensor) -> torch.Tensor:
            z = (x - self.offset) * self.inv_scale
            return torch.clamp(z, -settings.clip, 1.0 + settings.clip)

        def reconstruct(self, z: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.decoder(self.encoder(z))
            return out

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = self.normalise(x)
            last = flat - width
            error = (z[:, last:] - self.reconstruct(z)[:, last:]) ** 2
            return error

    return WindowAutoencoder()


def _min_max(series: Sequence[F32]) -> tuple[F32, F32]:
    stacked = np.concatenate(series)
    low = stacked.min(axis=0)
    span = stacked.max(axis=0) - low
    # a constant metric keeps unit scale: its later moves are measured in its own units
    return low.astype(np.float32), np.where(span > 1e-6, span, 1.0).astype(np.float32)


def train_window_autoencoder(
    series: Sequence[npt.ArrayLike],
    settings: WindowAutoencoderSettings = WindowAutoencoderSettings(),
    *,
    seed: int = 0,
    progress: bool = True,
) -> TrainedWindowAutoencoder:
    """Train one autoencoder on the windows of every series (each ``(steps, metrics)``, normal).

    Windows are cut on the fly from the padded series (never materialised: SMD's would take
    gigabytes), shuffled with a seeded generator; one thread, as training shares the machine.
    """
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    parts = [np.asarray(s, dtype=np.float32) for s in series]
    if not parts or any(p.ndim != 2 or len(p) == 0 for p in parts):
        raise ValueError("need at least one non-empty (steps, metrics) series")
    width = parts[0].shape[1]
    if any(p.shape[1] != width for p in parts):
        raise ValueError("series have different numbers of metrics")
    offset, scale = _min_max(parts)
    module = _module(width, settings, offset, scale)
    # every window of every series, as (series start in the padded stream, row) pairs
    pad = settings.window - 1
    padded = [np.concatenate([np.repeat(p[:1], pad, axis=0), p]) for p in parts]
    starts = np.cumsum([0] + [len(p) for p in padded[:-1]])
    index = np.concatenate([start + np.arange(len(p)) for start, p in zip(starts, parts, strict=True)])
    stream = torch.tensor(np.concatenate(padded))
    steps = torch.arange(settings.window)
    optimiser = torch.optim.Adam(module.parameters(), lr=settings.learning_rate)
    rng = np.random.default_rng(seed)
    per_epoch = -(-len(index) // settings.batch_size)
    epochs = max(1, min(settings.epochs, settings.max_steps // max(per_epoch, 1)))
    loss_value = float("nan")
    with tqdm(total=epochs * per_epoch, desc="multivariate autoencoder", disable=not progress) as bar:
        for _ in range(epochs):
            order = torch.from_numpy(rng.permutation(index))
            for first in range(0, len(order), settings.batch_size):
                rows = order[first : first + settings.batch_size]
                batch = stream[rows[:, None] + steps[None, :]].reshape(len(rows), -1)
                z = module.normalise(batch)
                loss = ((module.reconstruct(z) - z) ** 2).mean()
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                loss_value = float(loss.detach())
                bar.update()
            bar.set_postfix(loss=f"{loss_value:.5f}")
    module.eval()
    return TrainedWindowAutoencoder(
        onnx=export_onnx(module, settings.window * width),
        offset=offset,
        scale=scale,
        settings=settings,
        final_loss=loss_value,
        module=module,
    )


def export_onnx(module: Any, flat: int) -> bytes:
    """The module as an ONNX graph: input ``x`` ``(batch, flat)``, output ``error``."""
    return export_module(module, flat, ["error"])


def torch_errors(trained: TrainedWindowAutoencoder, rows: npt.ArrayLike) -> F32:
    """Per-metric errors of consecutive ``rows`` computed by the torch module (the reference)."""
    import torch

    data = np.asarray(rows, dtype=np.float32)
    windows = sliding_windows(data[:0], data, trained.settings.window)
    with torch.no_grad():
        out: F32 = trained.module(torch.from_numpy(windows)).numpy()
    return out


def calibrate_resource(errors: npt.ArrayLike, settings: WindowAutoencoderSettings) -> ResourceCalibration:
    """Weights and threshold of one resource from its per-metric errors on held-out normal rows."""
    error = np.asarray(errors, dtype=np.float64)
    if error.ndim != 2 or len(error) == 0:
        raise ValueError("need a non-empty (rows, metrics) matrix of held-out errors")
    mean = error.mean(axis=0)
    scale = np.maximum(mean, settings.error_floor * max(float(mean.mean()), 1e-12))
    weights = (1.0 / (scale * error.shape[1])).astype(np.float32)
    scores = (error * weights).sum(axis=1)
    threshold = float(np.quantile(scores, settings.quantile))
    return ResourceCalibration(weights=weights, threshold=threshold, scores=scores)
