"""``otelai replay --dataset smd``: see :mod:`otelai.replay.server_metrics`."""

from otelai.replay.server_metrics import smd_batches as batches

__all__ = ["batches"]
