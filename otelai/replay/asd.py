"""``otelai replay --dataset asd``: see :mod:`otelai.replay.server_metrics`."""

from otelai.replay.server_metrics import asd_batches as batches

__all__ = ["batches"]
