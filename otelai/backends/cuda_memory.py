"""Device buffers and a stream for backends that drive CUDA themselves (native TensorRT).

Two providers, whichever is installed: PyTorch's caching allocator and current stream, or the
CUDA runtime through cuda-python (https://nvidia.github.io/cuda-python/cuda-bindings/).
Buffers are allocated once at their largest size and reused, so a batch costs two copies and no
allocation.
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np

from otelai.backends.base import FloatArray, module_missing

__all__ = ["CudaContext", "DeviceBuffer", "cuda_context", "cuda_missing"]


class DeviceBuffer(abc.ABC):
    """A float32 device buffer of a fixed capacity (in elements)."""

    capacity: int

    @property
    @abc.abstractmethod
    def ptr(self) -> int:
        """The device address, for ``set_tensor_address``."""

    @abc.abstractmethod
    def upload(self, array: FloatArray) -> None:
        """Copy a C-contiguous float32 array to the start of the buffer, ordered on the stream."""

    @abc.abstractmethod
    def download(self, shape: tuple[int, ...]) -> FloatArray:
        """Copy the first ``prod(shape)`` elements back, after the stream's work; a new array."""


class CudaContext(abc.ABC):
    """A CUDA stream, its device's name, and buffers on that device."""

    @property
    @abc.abstractmethod
    def stream(self) -> int:
        """The stream handle, for ``execute_async_v3``."""

    @property
    @abc.abstractmethod
    def device_name(self) -> str:
        """The GPU's name (part of compiled-engine cache keys)."""

    @abc.abstractmethod
    def buffer(self, capacity: int) -> DeviceBuffer:
        """Allocate a float32 buffer of ``capacity`` elements."""

    @abc.abstractmethod
    def close(self) -> None:
        """Free the buffers and the stream; calling it again does nothing."""


def cuda_missing() -> str | None:
    """Why neither PyTorch with CUDA nor cuda-python can drive the GPU here, or None."""
    if module_missing("torch") is None:
        try:
            import torch

            if torch.cuda.is_available():
                return None
        except Exception:  # fall through to cuda-python
            pass
    if module_missing("cuda.bindings") is None:
        try:
            from cuda.bindings import runtime

            err, count = runtime.cudaGetDeviceCount()
            if int(err) == 0 and count > 0:
                return None
            return f"cuda-python sees no GPU ({err})"
        except Exception as exc:
            return f"cuda-python failed: {exc}"
    return "neither torch with CUDA nor cuda-python (cuda.bindings) is installed"


def cuda_context(device: int = 0, *, prefer: str = "torch") -> CudaContext:
    """Open a context on ``device`` with PyTorch if it has CUDA (or ``prefer="cuda-python"``)."""
    if prefer == "torch" and module_missing("torch") is None:
        import torch

        if torch.cuda.is_available():
            return _TorchContext(device)
    return _CudaPythonContext(device)


class _TorchBuffer(DeviceBuffer):
    def __init__(self, torch: Any, device: Any, capacity: int) -> None:
        self._torch = torch
        self.capacity = capacity
        self._tensor = torch.empty(capacity, dtype=torch.float32, device=device)

    @property
    def ptr(self) -> int:
        return int(self._tensor.data_ptr())

    def upload(self, array: FloatArray) -> None:
        # On torch's current stream, the same one execute_async_v3 is given.
        host = (
            array.reshape(-1) if array.flags.writeable else array.reshape(-1).copy()
        )  # from_numpy warns on read-only
        self._tensor[: array.size].copy_(self._torch.from_numpy(host))

    def download(self, shape: tuple[int, ...]) -> FloatArray:
        size = int(np.prod(shape))
        out: FloatArray = self._tensor[:size].cpu().numpy().reshape(shape)
        return out


class _TorchContext(CudaContext):
    def __init__(self, device: int) -> None:
        import torch

        self._torch = torch
        self._device = torch.device("cuda", device)
        torch.cuda.set_device(self._device)
        self._name = str(torch.cuda.get_device_name(self._device))
        self._buffers: list[_TorchBuffer] = []

    @property
    def stream(self) -> int:
        return int(self._torch.cuda.current_stream(self._device).cuda_stream)

    @property
    def device_name(self) -> str:
        return self._name

    def buffer(self, capacity: int) -> DeviceBuffer:
        buf = _TorchBuffer(self._torch, self._device, capacity)
        self._buffers.append(buf)
        return buf

    def close(self) -> None:
        self._buffers.clear()


def _check(result: Any) -> Any:
    """Unpack a cuda-python ``(err, *values)`` tuple, raising on an error code."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA runtime error {err}")
    return values[0] if len(values) == 1 else tuple(values)


class _CudaPythonBuffer(DeviceBuffer):
    def __init__(self, runtime: Any, stream: Any, capacity: int) -> None:
        self._rt = runtime
        self._stream = stream
        self.capacity = capacity
        self._ptr = int(_check(runtime.cudaMalloc(capacity * 4)))

    @property
    def ptr(self) -> int:
        return self._ptr

    def upload(self, array: FloatArray) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        _check(self._rt.cudaMemcpyAsync(self._ptr, array.ctypes.data, array.nbytes, kind, self._stream))

    def download(self, shape: tuple[int, ...]) -> FloatArray:
        out = np.empty(shape, dtype=np.float32)
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check(self._rt.cudaMemcpyAsync(out.ctypes.data, self._ptr, out.nbytes, kind, self._stream))
        _check(self._rt.cudaStreamSynchronize(self._stream))
        return out

    def free(self) -> None:
        if self._ptr:
            _check(self._rt.cudaFree(self._ptr))
            self._ptr = 0


class _CudaPythonContext(CudaContext):
    def __init__(self, device: int) -> None:
        from cuda.bindings import runtime

        self._rt = runtime
        _check(runtime.cudaSetDevice(device))
        props = _check(runtime.cudaGetDeviceProperties(device))
        name = props.name
        self._name = (name.split(b"\0", 1)[0].decode() if isinstance(name, bytes) else str(name)).strip()
        self._stream: Any = _check(runtime.cudaStreamCreate())
        self._buffers: list[_CudaPythonBuffer] = []

    @property
    def stream(self) -> int:
        return int(self._stream)

    @property
    def device_name(self) -> str:
        return self._name

    def buffer(self, capacity: int) -> DeviceBuffer:
        buf = _CudaPythonBuffer(self._rt, self._stream, capacity)
        self._buffers.append(buf)
        return buf

    def close(self) -> None:
        for buf in self._buffers:
            buf.free()
        self._buffers.clear()
        if self._stream is not None:
            _check(self._rt.cudaStreamDestroy(self._stream))
            self._stream = None
