"""PyTorch on CUDA, FP16 mixed precision, running the ONNX model converted by onnx2torch.

onnx2torch (https://github.com/ENOT-AutoDL/onnx2torch) turns the ONNX graph into a
``torch.fx.GraphModule``; it runs under ``torch.autocast`` (FP16 matrix products, FP32
reductions and element-wise ops on FP32 operands, https://pytorch.org/docs/stable/amp.html),
which keeps large reconstruction errors finite where a plain ``.half()`` model could overflow.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from otelai.backends.base import (
    Backend,
    BackendUnavailable,
    FloatArray,
    as_float32,
    model_bytes,
    module_missing,
    one_line,
)

__all__ = ["TorchCudaBackend"]


class TorchCudaBackend(Backend):
    """PyTorch CUDA backend.

    Options: ``device`` (``cuda:0``) and ``fp16`` (true: autocast to FP16; false: FP32).
    """

    name = "torch_cuda"
    precision = "fp16"
    defaults: ClassVar[Mapping[str, Any]] = {"device": "cuda:0", "fp16": True}

    @classmethod
    def probe(cls) -> str | None:
        missing = module_missing("torch", "onnx2torch", "onnx")
        if missing:
            return missing
        try:
            import torch

            if not torch.cuda.is_available():
                return "CUDA is not available to torch (no GPU, driver or CUDA build)"
        except Exception as exc:  # a broken CUDA install must not crash start-up
            return f"torch failed to initialise CUDA: {one_line(exc)}"
        return None

    def __init__(self, model: Path | bytes, *, options: Mapping[str, Any] | None = None) -> None:
        opts = self.validate_options(options)
        data = model_bytes(self.name, model)
        self._module: Any = None
        try:
            import onnx
            import torch
            from onnx2torch import convert

            proto = onnx.load_model_from_string(data)
            self._device = torch.device(str(opts["device"]))
            self._module = convert(proto).eval().to(self._device)
        except Exception as exc:  # parse errors, unsupported ops, CUDA errors
            raise BackendUnavailable(self.name, f"cannot load model: {one_line(exc)}") from exc
        self._torch = torch
        self._fp16 = bool(opts["fp16"])
        graph = proto.graph
        initialisers = {init.name for init in graph.initializer}
        inputs = [value for value in graph.input if value.name not in initialisers]
        self._inputs = tuple(value.name for value in inputs)
        self._outputs = tuple(value.name for value in graph.output)
        self._shapes = {
            value.name: tuple(
                dim.dim_value if dim.HasField("dim_value") else None
                for dim in value.type.tensor_type.shape.dim
            )
            for value in inputs
        }
        self._lock = threading.Lock()

    def run(self, inputs: Mapping[str, FloatArray]) -> dict[str, FloatArray]:
        feed = as_float32(self.name, inputs, self._inputs)
        torch = self._torch
        with self._lock:
            module = self._module
            if module is None:
                raise self._closed_error()
            with (
                torch.inference_mode(),
                torch.autocast(device_type=self._device.type, dtype=torch.float16, enabled=self._fp16),
            ):
                args = [torch.from_numpy(_writable(feed[name])).to(self._device) for name in self._inputs]
                result = module(*args)
        outputs = result if isinstance(result, tuple | list) else (result,)
        # .cpu() waits for the stream, so the arrays are complete when returned.
        arrays = [np.asarray(out.float().cpu().numpy(), dtype=np.float32) for out in outputs]
        return dict(zip(self._outputs, arrays, strict=True))

    def close(self) -> None:
        with self._lock:
            if self._module is None:
                return
            self._module = None
            # Hand the cached blocks back so another backend (or process) can use the memory.
            self._torch.cuda.empty_cache()


def _writable(array: FloatArray) -> FloatArray:
    """torch.from_numpy warns on read-only arrays (e.g. np.frombuffer); copy those."""
    return array if array.flags.writeable else array.copy()
