"""ONNX Runtime on the CUDA execution provider.

Provider options follow https://onnxruntime.ai/docs/execution-providers/CUDA-ExecutionProvider.html.
The model runs as shipped (fp32, with TF32 tensor-core math allowed by default); it needs the
``onnxruntime-gpu`` package, which replaces the CPU ``onnxruntime`` package in its environment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from otelai.backends.base import module_missing
from otelai.backends.onnxruntime import OrtSessionBackend, ProviderSpec

__all__ = ["OrtCudaBackend", "ort_provider_missing"]


def ort_provider_missing(provider: str) -> str | None:
    """Return why ONNX Runtime here lacks ``provider``, or None when it has it."""
    missing = module_missing("onnxruntime")
    if missing:
        return missing
    try:
        import onnxruntime as ort

        available = ort.get_available_providers()
    except Exception as exc:  # a broken install must not crash start-up
        return f"onnxruntime failed to import: {exc}"
    if provider not in available:
        return f"{provider} is not in this onnxruntime build (install onnxruntime-gpu); has {', '.join(available)}"
    return None


class OrtCudaBackend(OrtSessionBackend):
    """ONNX Runtime, CUDA execution provider.

    Options: those of `OnnxRuntimeBackend`, plus ``device_id`` (0) and ``use_tf32`` (true:
    TF32 tensor-core matrix products, about 1e-3 relative error; false for exact fp32).
    """

    name = "cuda"
    precision = "tf32"
    defaults: ClassVar[Mapping[str, Any]] = {
        **OrtSessionBackend.defaults,
        "device_id": 0,
        "use_tf32": True,
    }

    @classmethod
    def probe(cls) -> str | None:
        return ort_provider_missing("CUDAExecutionProvider")

    def _providers(self, model: bytes) -> Sequence[ProviderSpec]:
        cuda = {
            "device_id": int(self._options["device_id"]),
            "use_tf32": int(bool(self._options["use_tf32"])),
        }
        return [("CUDAExecutionProvider", cuda), ("CPUExecutionProvider", {})]
