"""A dense autoencoder scored by reconstruction error, served from its ONNX graph.

Hawkins, He, Williams & Baxter, "Outlier Detection Using Replicator Neural Networks" (DaWaK
2002); Sakurada & Yairi, "Anomaly Detection Using Autoencoders with Nonlinear Dimensionality
Reduction" (MLSDA 2014). A network trained to reproduce normal feature rows through a narrow
layer reproduces rows unlike them badly; the squared error is the score. The graph holds the
whole computation: standardisation with the training mean and scale, clipping of the
standardised values, the network, and the per-feature squared error (``residual``), which
names the features behind a score. Training (PyTorch, offline) is in
:mod:`otelai.models.training.autoencoder`.
"""

from __future__ import annotations

from typing import ClassVar

from otelai.detectors.bundled import OnnxModelDetector


class AutoencoderDetector(OnnxModelDetector):
    """Reconstruction error of a trained autoencoder (bundle kind ``autoencoder``).

    Examples
    --------
    Built from a bundle entry by :func:`otelai.detectors.registry.load_detector`, or from a
    graph directly: ``AutoencoderDetector.from_model(path, n_features=20)``.
    """

    name: ClassVar[str] = "autoencoder"
