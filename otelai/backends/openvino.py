"""OpenVINO runtime: the ONNX model compiled for the CPU (or another OpenVINO device).

Reads the ONNX model with OpenVINO's ONNX frontend and compiles it
(https://docs.openvino.ai/2025/openvino-workflow/running-inference.html). OpenVINO's CPU plugin
defaults to bf16 inference on CPUs with AMX/AVX-512 BF16, which shifts anomaly scores against
the other backends; this backend asks for f32 unless configured otherwise.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
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

__all__ = ["OpenVinoBackend"]

_PRECISIONS = ("f32", "bf16", "f16")


class OpenVinoBackend(Backend):
    """OpenVINO runtime.

    Options: ``device`` (``CPU``), ``precision`` (``f32`` | ``bf16`` | ``f16``; default ``f32``),
    ``num_streams`` (1) and ``inference_num_threads`` (1: the hop has two cores to share).
    """

    name = "openvino"
    defaults: ClassVar[Mapping[str, Any]] = {
        "device": "CPU",
        "precision": "f32",
        "num_streams": 1,
        "inference_num_threads": 1,
    }

    @classmethod
    def probe(cls) -> str | None:
        return module_missing("openvino")

    @classmethod
    def validate_options(cls, options: Mapping[str, Any] | None) -> dict[str, Any]:
        merged = super().validate_options(options)
        if merged["precision"] not in _PRECISIONS:
            raise ValueError(
                f"backend {cls.name!r}: precision must be one of {', '.join(_PRECISIONS)}, got {merged['precision']!r}"
            )
        cls._check_counts(merged, ("num_streams", "inference_num_threads"), "runtime default")
        return merged

    def __init__(self, model: Path | bytes, *, options: Mapping[str, Any] | None = None) -> None:
        opts = self.validate_options(options)
        data = model_bytes(self.name, model)
        self._request: Any = None
        try:
            import openvino as ov

            core = ov.Core()
            # read_model takes the bytes of an ONNX file directly; no temporary file.
            compiled = core.compile_model(core.read_model(data), str(opts["device"]), self._config(opts))
            self._request = compiled.create_infer_request()
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
            raise BackendUnavailable(self.name, f"cannot load model: {one_line(exc)}") from exc
        self._compiled = compiled
        self._inputs = tuple(port.get_any_name() for port in compiled.inputs)
        self._outputs = tuple(port.get_any_name() for port in compiled.outputs)
        self._shapes = {
            port.get_any_name(): tuple(
                None if dim.is_dynamic else dim.get_length() for dim in port.get_partial_shape()
            )
            for port in compiled.inputs
        }
        # One infer request is not thread-safe; the batcher runs one batch at a time anyway.
        self._lock = threading.Lock()

    @staticmethod
    def _config(opts: Mapping[str, Any]) -> dict[str, Any]:
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": str(opts["precision"]),
            "PERFORMANCE_HINT": "LATENCY",
        }
        if opts["num_streams"]:
            config["NUM_STREAMS"] = int(opts["num_streams"])
        if opts["inference_num_threads"]:
            config["INFERENCE_NUM_THREADS"] = int(opts["inference_num_threads"])
        return config

    def run(self, inputs: Mapping[str, FloatArray]) -> dict[str, FloatArray]:
        feed = as_float32(self.name, inputs, self._inputs)
        with self._lock:
            request = self._request
            if request is None:
                raise self._closed_error()
            # share_inputs wraps the numpy buffers without a copy; outputs are copied once so
            # the caller owns them after the request is reused.
            results = request.infer(feed, share_inputs=True, share_outputs=False)
            arrays = results.to_tuple()
        return dict(zip(self._outputs, arrays, strict=True))

    def close(self) -> None:
        with self._lock:
            self._request = None
            self._compiled = None
