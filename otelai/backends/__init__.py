"""Inference backends: one plugin per runtime, all running the same ONNX model.

Plugins register under the ``otelai.backends`` entry point group and import their runtime
lazily, so importing this package costs numpy and nothing more. `load_backend` picks the first
backend of the configured order that works here; `FallbackBackend` also moves on at run time.
"""

from otelai.backends.base import Backend, BackendUnavailable, FloatArray, NoBackendAvailable
from otelai.backends.select import (
    ENTRY_POINT_GROUP,
    FallbackBackend,
    FallbackCallback,
    backend_class,
    installed_backends,
    load_backend,
    probe_all,
    smoke_test,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "Backend",
    "BackendUnavailable",
    "FallbackBackend",
    "FallbackCallback",
    "FloatArray",
    "NoBackendAvailable",
    "backend_class",
    "installed_backends",
    "load_backend",
    "probe_all",
    "smoke_test",
]
