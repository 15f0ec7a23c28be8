"""Replay data sets as OTLP to any OTLP endpoint (``otelai replay``).

Each data set is one module that turns its files into serialised OTLP requests
(:mod:`otelai.replay.otel_demo`, ...); :mod:`otelai.replay.send` sends them. Adding a data set
is one module and one line in :data:`DATASETS`.
"""

from otelai.replay.batch import Batch, SourceError
from otelai.replay.send import DATASETS, ReplayStats, dataset_batches, replay

__all__ = ["DATASETS", "Batch", "ReplayStats", "SourceError", "dataset_batches", "replay"]
