"""Training of the dense autoencoder detector in PyTorch, exported to ONNX.

Hawkins et al., "Outlier Detection Using Replicator Neural Networks" (DaWaK 2002); Sakurada &
Yairi, "Anomaly Detection Using Autoencoders with Nonlinear Dimensionality Reduction" (MLSDA
2014). Rows are standardised with the training mean and spread (floored, so a feature that
is almost constant in training cannot explode), clipped to +-``clip``, and reconstructed
through a bottleneck; the squared error per feature is the ``residual`` and its sum the
``score``. The exported graph holds the standardisation too, so the service feeds it raw
feature rows (:class:`otelai.detectors.autoencoder.AutoencoderDetector`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from otelai.models.training.onnx_export import export_module

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class AutoencoderSettings:
    """Shape and training of the network.

    ``hidden`` and ``bottleneck`` are layer widths; ``min_scale`` floors each feature's
    standard deviation and ``clip`` bounds the standardised values.
    """

    hidden: int = 32
    bottleneck: int = 6
    epochs: int = 40
    batch_size: int = 256
    learning_rate: float = 1e-2
    weight_decay: float = 1e-5
    min_scale: float = 0.1
    clip: float = 10.0


@dataclass(frozen=True)
class TrainedAutoencoder:
    """A trained autoencoder: its ONNX graph, the statistics inside it, and the PyTorch module
    (for checking the graph against the framework)."""

    onnx: bytes
    mean: F32
    scale: F32
    settings: AutoencoderSettings
    final_loss: float
    module: Any = field(repr=False)

    def score(self, rows: npt.ArrayLike) -> F32:
        """Scores computed by PyTorch (the graph must agree)."""
        import torch

        with torch.no_grad():
            score, _ = self.module(torch.as_tensor(np.asarray(rows, dtype=np.float32)))
        result: F32 = score.numpy().astype(np.float32)
        return result

    @property
    def params(self) -> dict[str, Any]:
        """What the bundle entry records (``DetectorSpec.params``)."""
        s = self.settings
        return {
            "n_features": len(self.mean),
            "hidden": s.hidden,
            "bottleneck": s.bottleneck,
            "epochs": s.epochs,
            "min_scale": s.min_scale,
            "clip": s.clip,
            "final_loss": round(self.final_loss, 6),
        }


def _module(width: int, settings: AutoencoderSettings, mean: F32, scale: F32) -> Any:
    import torch
    from torch import nn

    class Scored(nn.Module):
        """Standardise, clip, reconstruct; return (score, residual)."""

        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.as_tensor(mean))
            self.register_buffer("inv_scale", torch.as_tensor(1.0 / scale))
            self.clip = float(settings.clip)
            self.net = nn.Sequential(
                nn.Linear(width, settings.hidden),
                nn.Tanh(),
                nn.Linear(settings.hidden, settings.bottleneck),
                nn.Tanh(),
                nn.Linear(settings.bottleneck, settings.hidden),
                nn.Tanh(),
                nn.Linear(settings.hidden, width),
            )

        def standardise(self, x: Any) -> Any:
            return torch.clamp((x - self.mean) * self.inv_scale, -self.clip, self.clip)

        def forward(self, x: Any) -> tuple[Any, Any]:
            z = self.standardise(x)
            error = z - self.net(z)
            residual = error * error
            return residual.sum(dim=1), residual

    return Scored()


def train_autoencoder(
    rows: npt.ArrayLike,
    *,
    settings: AutoencoderSettings | None = None,
    seed: int = 0,
    progress: bool = False,
) -> TrainedAutoencoder:
    """Train on ``rows`` (normal feature rows, one a row) and export the graph.

    Uses one CPU thread (the machines are shared) and seeds PyTorch, so a run is repeatable.
    """
    import torch
    from tqdm import tqdm

    settings = settings or AutoencoderSettings()
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    data = np.asarray(rows, dtype=np.float32)
    if data.ndim != 2 or len(data) < 2:
        raise ValueError(f"need a 2-D array of at least two rows, got shape {data.shape}")
    mean = data.mean(axis=0).astype(np.float32)
    scale = np.maximum(data.std(axis=0), settings.min_scale).astype(np.float32)
    module = _module(data.shape[1], settings, mean, scale)
    optimiser = torch.optim.Adam(
        module.net.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=settings.epochs)
    tensor = torch.as_tensor(data)
    generator = torch.Generator().manual_seed(seed)
    loss_value = float("nan")
    for _ in tqdm(range(settings.epochs), desc="autoencoder", unit="epoch", disable=not progress):
        order = torch.randperm(len(tensor), generator=generator)
        total, count = 0.0, 0
        for start in range(0, len(tensor), settings.batch_size):
            batch = tensor[order[start : start + settings.batch_size]]
            score, _ = module(batch)
            loss = score.mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(batch)
            count += len(batch)
        schedule.step()
        loss_value = total / max(count, 1)
    module.eval()
    return TrainedAutoencoder(
        onnx=export_onnx(module, data.shape[1]),
        mean=mean,
        scale=scale,
        settings=settings,
        final_loss=loss_value,
        module=module,
    )


def export_onnx(module: Any, width: int) -> bytes:
    """The module as an ONNX graph: input ``x`` [batch, width], outputs ``score``, ``residual``."""
    return export_module(module, width, ["score", "residual"])
