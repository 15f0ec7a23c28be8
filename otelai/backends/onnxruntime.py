"""ONNX Runtime on the CPU execution provider: the default backend.

Runs the model with ONNX Runtime's ``InferenceSession``
(https://onnxruntime.ai/docs/api/python/api_summary.html); the GPU execution providers
(`otelai.backends.ort_cuda`, `otelai.backends.ort_tensorrt`) reuse this class with other providers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from otelai.backends.base import (
    Backend,
    BackendUnavailable,
    FloatArray,
    as_float32,
    model_bytes,
    module_missing,
    one_line,
)

__all__ = ["OnnxRuntimeBackend", "OrtSessionBackend"]

_OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}

ProviderSpec = tuple[str, dict[str, Any]]


class OrtSessionBackend(Backend):
    """An ONNX Runtime session over one execution provider; subclasses pick the provider."""

    defaults: ClassVar[Mapping[str, Any]] = {
        "graph_optimization_level": "all",
        # One thread each: the hop has two cores and the receiver and exporter need them too.
        "intra_op_num_threads": 1,
        "inter_op_num_threads": 1,
    }

    @classmethod
    def validate_options(cls, options: Mapping[str, Any] | None) -> dict[str, Any]:
        merged = super().validate_options(options)
        if merged["graph_optimization_level"] not in _OPT_LEVELS:
            raise ValueError(
                f"backend {cls.name!r}: graph_optimization_level must be one of "
                f"{', '.join(_OPT_LEVELS)}, got {merged['graph_optimization_level']!r}"
            )
        cls._check_counts(merged, ("intra_op_num_threads", "inter_op_num_threads"), "all cores")
        return merged

    def __init__(self, model: Path | bytes, *, options: Mapping[str, Any] | None = None) -> None:
        self._options = self.validate_options(options)
        self._session: Any = None
        data = model_bytes(self.name, model)
        try:
            import onnxruntime as ort

            session_options = self._session_options(ort)
            providers = self._providers(data)
            self._session = ort.InferenceSession(data, sess_options=session_options, providers=providers)
        except BackendUnavailable:
            raise
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/etc. and RuntimeError
            raise BackendUnavailable(self.name, f"cannot load model: {one_line(exc)}") from exc
        # ORT silently falls back to the CPU provider when a GPU provider fails to initialise:
        # a GPU backend that landed on the CPU is unavailable, not a quiet slowdown.
        wanted = providers[0][0]
        if wanted not in self._session.get_providers():
            self.close()
            raise BackendUnavailable(
                self.name, f"{wanted} did not initialise (ONNX Runtime fell back to CPU)"
            )
        self._inputs = tuple(node.name for node in self._session.get_inputs())
        self._outputs = tuple(node.name for node in self._session.get_outputs())
        self._shapes = {
            node.name: tuple(dim if isinstance(dim, int) else None for dim in node.shape)
            for node in self._session.get_inputs()
        }

    def _session_options(self, ort: Any) -> Any:
        opts = ort.SessionOptions()
        level = _OPT_LEVELS[self._options["graph_optimization_level"]]
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        opts.intra_op_num_threads = int(self._options["intra_op_num_threads"])
        opts.inter_op_num_threads = int(self._options["inter_op_num_threads"])
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Spinning pool threads burn a core between batches, starving the event loop.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        return opts

    def _providers(self, model: bytes) -> Sequence[ProviderSpec]:
        """The providers in priority order; the first is the one this backend stands for."""
        return [("CPUExecutionProvider", {})]

    def run(self, inputs: Mapping[str, FloatArray]) -> dict[str, FloatArray]:
        session = self._session
        if session is None:
            raise self._closed_error()
        feed = as_float32(self.name, inputs, self._inputs)
        results = session.run(None, feed)
        return dict(zip(self._outputs, results, strict=True))

    def close(self) -> None:
        # ORT frees the session when the last reference goes; dropping ours is the close.
        self._session = None


class OnnxRuntimeBackend(OrtSessionBackend):
    """ONNX Runtime, CPU execution provider (the default backend).

    Options: ``graph_optimization_level`` (``disable`` | ``basic`` | ``extended`` | ``all``),
    ``intra_op_num_threads`` and ``inter_op_num_threads`` (default 1 each).
    """

    name = "onnxruntime"

    @classmethod
    def probe(cls) -> str | None:
        return module_missing("onnxruntime")
