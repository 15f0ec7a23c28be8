"""ONNX Runtime on the TensorRT execution provider (FP16, cached engines).

Provider options follow
https://onnxruntime.ai/docs/execution-providers/TensorRT-ExecutionProvider.html: FP16, an engine
cache directory so restarts skip the minutes-long engine build, and an explicit optimisation
profile for the dynamic batch dimension so a new batch size never triggers a rebuild.
Nodes TensorRT cannot take run on the CUDA provider behind it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from otelai.backends.base import BackendUnavailable, default_cache_dir
from otelai.backends.onnxruntime import OrtSessionBackend, ProviderSpec
from otelai.backends.ort_cuda import ort_provider_missing

__all__ = ["OrtTensorRtBackend", "profile_shapes"]


def profile_shapes(shapes: Mapping[str, tuple[int | None, ...]], batch: int) -> str:
    """Format a TensorRT EP profile string (``x:64x32,y:64x8``) with ``batch`` rows.

    Raises
    ------
    ValueError
        When a dimension other than the batch is dynamic: the profile cannot guess it.
    """
    parts = []
    for name, shape in shapes.items():
        rest = shape[1:]
        if any(dim is None for dim in rest):
            raise ValueError(f"input {name!r} has a dynamic non-batch dimension {shape}")
        parts.append(f"{name}:{'x'.join(str(dim) for dim in (batch, *rest))}")
    return ",".join(parts)


class OrtTensorRtBackend(OrtSessionBackend):
    """ONNX Runtime, TensorRT execution provider.

    Options: those of `OnnxRuntimeBackend`, plus ``device_id`` (0), ``trt_fp16_enable`` (true),
    ``trt_engine_cache_enable`` (true), ``trt_engine_cache_path`` (default
    ``$XDG_CACHE_HOME/otelai/tensorrt_ep``), ``max_batch_size`` (4096) and ``opt_batch_size``
    (256): the optimisation profile's largest and tuned batch.
    """

    name = "tensorrt_ep"
    precision = "fp16"
    defaults: ClassVar[Mapping[str, Any]] = {
        **OrtSessionBackend.defaults,
        "device_id": 0,
        "trt_fp16_enable": True,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": None,
        "max_batch_size": 4096,
        "opt_batch_size": 256,
    }

    @classmethod
    def probe(cls) -> str | None:
        return ort_provider_missing("TensorrtExecutionProvider")

    def _providers(self, model: bytes) -> Sequence[ProviderSpec]:
        opts = self._options
        cache = opts["trt_engine_cache_path"] or str(default_cache_dir(self.name))
        device = int(opts["device_id"])
        shapes = _input_shapes(model)
        try:
            profile = {
                "trt_profile_min_shapes": profile_shapes(shapes, 1),
                "trt_profile_opt_shapes": profile_shapes(shapes, int(opts["opt_batch_size"])),
                "trt_profile_max_shapes": profile_shapes(shapes, int(opts["max_batch_size"])),
            }
        except ValueError as exc:
            raise BackendUnavailable(self.name, str(exc)) from exc
        trt = {
            "device_id": device,
            "trt_fp16_enable": bool(opts["trt_fp16_enable"]),
            "trt_engine_cache_enable": bool(opts["trt_engine_cache_enable"]),
            "trt_engine_cache_path": cache,
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": cache,
            **profile,
        }
        return [("TensorrtExecutionProvider", trt), ("CUDAExecutionProvider", {"device_id": device})]


def _input_shapes(model: bytes) -> dict[str, tuple[int | None, ...]]:
    """Read input shapes with an unoptimised CPU session: cheap, and needs no ``onnx`` package."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
    return {
        node.name: tuple(dim if isinstance(dim, int) else None for dim in node.shape)
        for node in session.get_inputs()
    }
