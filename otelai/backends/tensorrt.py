"""Native TensorRT: an engine built from the ONNX model, cached on disk, run on CUDA buffers.

Follows TensorRT's Python workflow (https://docs.nvidia.com/deeplearning/tensorrt/latest/
inference-library/python-api-docs.html): ONNX parser, one optimisation profile covering batch
sizes 1..``max_batch_size``, ``build_serialized_network``, ``execute_async_v3``. The serialised
engine is cached under a key of the model's sha256, the TensorRT version, the GPU's name and the
build settings, since an engine is only valid for that exact combination.

Precision: on TensorRT 10 the FP16 builder flag lets TensorRT pick FP16 kernels. TensorRT 11
removed that flag (networks are strongly typed; precision comes from the model's own types), so
there the engine runs at the model's precision: ship a mixed-precision model (ModelOpt AutoCast)
for FP16 on TensorRT 11.
"""

from __future__ import annotations

import hashlib
import logging
import os
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
    default_cache_dir,
    model_bytes,
    model_sha256,
    module_missing,
    one_line,
)
from otelai.backends.cuda_memory import CudaContext, DeviceBuffer, cuda_context, cuda_missing

__all__ = ["TensorRtBackend"]

_log = logging.getLogger("otelai.backends")


class TensorRtBackend(Backend):
    """Native TensorRT backend.

    Options: ``device_id`` (0), ``fp16`` (true; effective on TensorRT 10, see the module notes),
    ``max_batch_size`` (4096) and ``opt_batch_size`` (256) for the optimisation profile (bigger
    batches are run in chunks), ``engine_cache_path`` (default ``$XDG_CACHE_HOME/otelai/tensorrt``)
    and ``workspace_bytes`` (1 GiB).
    """

    name = "tensorrt"
    precision = "fp16"
    defaults: ClassVar[Mapping[str, Any]] = {
        "device_id": 0,
        "fp16": True,
        "max_batch_size": 4096,
        "opt_batch_size": 256,
        "engine_cache_path": None,
        "workspace_bytes": 1 << 30,
    }

    @classmethod
    def probe(cls) -> str | None:
        missing = module_missing("tensorrt")
        if missing:
            return missing
        try:
            # The PyPI ``tensorrt`` name can be a stub that raises on import, or a build for
            # another CUDA; any failure here is a reason, never a crash.
            import tensorrt

            version = str(tensorrt.__version__)
        except (Exception, SystemExit) as exc:  # some stubs exit from their __init__
            return f"tensorrt failed to import: {one_line(exc)}"
        no_cuda = cuda_missing()
        if no_cuda:
            return f"tensorrt {version} found but CUDA is unusable: {no_cuda}"
        return None

    def __init__(self, model: Path | bytes, *, options: Mapping[str, Any] | None = None) -> None:
        opts = self.validate_options(options)
        data = model_bytes(self.name, model)
        self._opts = opts
        self._lock = threading.Lock()
        self._max_batch = int(opts["max_batch_size"])
        self._context: Any = None
        self._engine: Any = None
        self._runtime: Any = None
        self._cuda: CudaContext | None = None
        try:
            import tensorrt as trt

            self._trt = trt
            self._cuda = cuda_context(int(opts["device_id"]))
            self._logger = trt.Logger(trt.Logger.ERROR)
            self._engine = self._load_engine(data)
            self._context = self._engine.create_execution_context()
            self._bind_io()
        except BackendUnavailable:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise BackendUnavailable(self.name, f"cannot build engine: {one_line(exc)}") from exc

    def _load_engine(self, data: bytes) -> Any:
        """Deserialise the cached engine, or build, cache and deserialise a new one."""
        assert self._cuda is not None
        trt = self._trt
        opts = self._opts
        settings = f"{trt.__version__}|{self._cuda.device_name}|fp16={opts['fp16']}|{self._max_batch}|{opts['opt_batch_size']}"
        key = f"{model_sha256(data)[:32]}-{hashlib.sha256(settings.encode()).hexdigest()[:16]}"
        cache_dir = Path(opts["engine_cache_path"] or default_cache_dir(self.name))
        path = cache_dir / f"{key}.engine"
        # The runtime must outlive the engines it deserialised.
        self._runtime = trt.Runtime(self._logger)
        if path.is_file():
            engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
            if engine is not None:
                return engine
            _log.warning("tensorrt: cached engine %s does not load; rebuilding", path)
        serialized = self._build(data)
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(serialized)
            os.replace(tmp, path)  # atomic: a concurrent reader never sees half an engine
        except OSError as exc:
            _log.warning("tensorrt: cannot cache engine in %s: %s", cache_dir, exc)
        engine = self._runtime.deserialize_cuda_engine(serialized)
        if engine is None:
            raise BackendUnavailable(self.name, "the freshly built engine does not deserialise")
        return engine

    def _build(self, data: bytes) -> bytes:
        trt = self._trt
        opts = self._opts
        builder = trt.Builder(self._logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse(data):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BackendUnavailable(self.name, f"ONNX parser: {errors or 'unknown error'}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts["workspace_bytes"]))
        if opts["fp16"] and hasattr(trt.BuilderFlag, "FP16"):
            config.set_flag(trt.BuilderFlag.FP16)
        profile = builder.create_optimization_profile()
        opt_batch = min(int(opts["opt_batch_size"]), self._max_batch)
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            rest = tuple(tensor.shape)[1:]
            if any(dim < 0 for dim in rest):
                raise BackendUnavailable(
                    self.name, f"input {tensor.name!r} has a dynamic non-batch dimension"
                )
            profile.set_shape(tensor.name, (1, *rest), (opt_batch, *rest), (self._max_batch, *rest))
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise BackendUnavailable(self.name, "build_serialized_network failed")
        return bytes(serialized)

    def _bind_io(self) -> None:
        """Read the engine's tensors and allocate each one's buffer at the largest batch."""
        trt = self._trt
        engine = self._engine
        assert self._cuda is not None
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {name: engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT for name in names}
        self._inputs = tuple(name for name in names if is_input[name])
        self._outputs = tuple(name for name in names if not is_input[name])
        self._shapes: dict[str, tuple[int | None, ...]] = {}
        self._rest: dict[str, tuple[int, ...]] = {}
        self._buffers: dict[str, DeviceBuffer] = {}
        for name in names:
            if engine.get_tensor_dtype(name) != trt.DataType.FLOAT:
                raise BackendUnavailable(self.name, f"tensor {name!r} is not float32")
            rest = tuple(engine.get_tensor_shape(name))[1:]
            if any(dim < 0 for dim in rest):
                raise BackendUnavailable(self.name, f"tensor {name!r} has a dynamic non-batch dimension")
            self._rest[name] = rest
            if is_input[name]:
                self._shapes[name] = (None, *rest)
            self._buffers[name] = self._cuda.buffer(self._max_batch * int(np.prod(rest, dtype=np.int64)))
            self._context.set_tensor_address(name, self._buffers[name].ptr)

    def run(self, inputs: Mapping[str, FloatArray]) -> dict[str, FloatArray]:
        feed = as_float32(self.name, inputs, self._inputs)
        rows = {len(array) for array in feed.values()}
        if len(rows) != 1:
            raise ValueError(f"backend {self.name!r}: inputs differ in batch size {sorted(rows)}")
        total = rows.pop()
        with self._lock:
            if self._context is None:
                raise self._closed_error()
            if total == 0:  # the profile starts at 1 row
                return {name: np.empty((0, *self._rest[name]), dtype=np.float32) for name in self._outputs}
            chunks = [
                self._run_chunk(
                    {name: array[start : start + self._max_batch] for name, array in feed.items()}
                )
                for start in range(0, total, self._max_batch)
            ]
        if len(chunks) == 1:
            return chunks[0]
        return {name: np.concatenate([chunk[name] for chunk in chunks]) for name in self._outputs}

    def _run_chunk(self, feed: Mapping[str, FloatArray]) -> dict[str, FloatArray]:
        assert self._cuda is not None
        for name, array in feed.items():
            self._context.set_input_shape(name, array.shape)
            self._buffers[name].upload(array)
        if not self._context.execute_async_v3(self._cuda.stream):
            raise RuntimeError("tensorrt: execute_async_v3 failed")
        return {
            name: self._buffers[name].download(tuple(self._context.get_tensor_shape(name)))
            for name in self._outputs
        }

    def close(self) -> None:
        with self._lock:
            # Context before engine before CUDA memory: the engine's memory is freed last.
            self._context = None
            self._engine = None
            self._runtime = None
            if self._cuda is not None:
                self._cuda.close()
                self._cuda = None
