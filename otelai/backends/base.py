"""The inference backend interface: one ONNX model, run on whole float32 batches.

Every backend runs the same ONNX model (https://onnx.ai/onnx/repo-docs/IR.html); a backend is
chosen by configuration and swapped for the next one in the fallback list when its library or
device is missing. Plugins import their heavy runtime lazily, inside ``probe`` and ``__init__``.
"""

from __future__ import annotations

import abc
import hashlib
import importlib.util
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self

import numpy as np
import numpy.typing as npt

__all__ = [
    "Backend",
    "BackendUnavailable",
    "FloatArray",
    "NoBackendAvailable",
    "as_float32",
    "default_cache_dir",
    "model_bytes",
    "model_sha256",
    "module_missing",
    "one_line",
]

FloatArray = npt.NDArray[np.float32]


class BackendUnavailable(RuntimeError):
    """A backend cannot run here, or cannot load the model.

    Parameters
    ----------
    backend
        The backend's registered name.
    reason
        One line saying why.
    """

    def __init__(self, backend: str, reason: str) -> None:
        super().__init__(f"{backend}: {reason}")
        self.backend = backend
        self.reason = reason


class NoBackendAvailable(RuntimeError):
    """Every backend in the configured order failed; ``reasons`` maps each name to why."""

    def __init__(self, reasons: Mapping[str, str]) -> None:
        listed = "; ".join(f"{name}: {reason}" for name, reason in reasons.items()) or "empty order"
        super().__init__(f"no inference backend available ({listed})")
        self.reasons = dict(reasons)


class Backend(abc.ABC):
    """One way to run an ONNX model on whole batches.

    Plugins register under the ``otelai.backends`` entry point group. The constructor loads or
    compiles the model and raises `BackendUnavailable` when it cannot; ``run`` is synchronous
    (the batcher calls it from a worker thread) and may be called from several threads.

    Parameters
    ----------
    model
        The ONNX model: a file path or its serialised bytes.
    options
        Backend-specific settings, checked by `validate_options`.
    """

    name: ClassVar[str]
    #: Arithmetic at default options: ``fp32``, ``tf32`` or ``fp16`` (``fp16`` = mixed precision).
    precision: ClassVar[str] = "fp32"
    #: Option names and their defaults; an option outside this mapping is a configuration error.
    defaults: ClassVar[Mapping[str, Any]] = {}

    @classmethod
    @abc.abstractmethod
    def probe(cls) -> str | None:
        """Say whether this backend can run here, cheaply and without loading a model.

        Returns
        -------
        None when usable, else a one-line reason (library missing, no device).
        """

    @classmethod
    def validate_options(cls, options: Mapping[str, Any] | None) -> dict[str, Any]:
        """Merge ``options`` over the defaults, refusing unknown names.

        Raises
        ------
        ValueError
            Naming the unknown option and the known ones; a configuration error, not a fallback.
        """
        merged = dict(cls.defaults)
        for key, value in (options or {}).items():
            if key not in cls.defaults:
                known = ", ".join(sorted(cls.defaults)) or "none"
                raise ValueError(f"backend {cls.name!r}: unknown option {key!r} (known: {known})")
            merged[key] = value
        return merged

    @classmethod
    def _check_counts(cls, merged: Mapping[str, Any], keys: Sequence[str], zero: str) -> None:
        """Thread and stream counts: integers >= 0, where 0 means ``zero``."""
        for key in keys:
            if not isinstance(merged[key], int) or merged[key] < 0:
                raise ValueError(f"backend {cls.name!r}: {key} must be an integer >= 0 (0 = {zero})")

    @abc.abstractmethod
    def __init__(self, model: Path | bytes, *, options: Mapping[str, Any] | None = None) -> None: ...

    # Set by each plugin's constructor from its loaded model.
    _inputs: tuple[str, ...]
    _outputs: tuple[str, ...]
    _shapes: Mapping[str, tuple[int | None, ...]]

    @property
    def input_names(self) -> tuple[str, ...]:
        """The model's input names, in model order."""
        return self._inputs

    @property
    def output_names(self) -> tuple[str, ...]:
        """The model's output names, in model order."""
        return self._outputs

    @property
    def input_shapes(self) -> Mapping[str, tuple[int | None, ...]]:
        """Each input's shape; ``None`` marks a dynamic dimension (the first is the batch)."""
        return self._shapes

    @abc.abstractmethod
    def run(self, inputs: Mapping[str, FloatArray]) -> dict[str, FloatArray]:
        """Run one batch.

        Parameters
        ----------
        inputs
            One float32 array per input name, all with the same first (batch) dimension.

        Returns
        -------
        One float32 array per output name, each with the batch dimension first. The arrays
        belong to the caller: a later ``run`` does not overwrite them.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release the runtime's resources; calling it again does nothing."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _closed_error(self) -> RuntimeError:
        return RuntimeError(f"backend {self.name!r} is closed")


def module_missing(*modules: str) -> str | None:
    """Return ``"X is not installed"`` for the first module not importable, without importing it."""
    for module in modules:
        try:
            found = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            found = None
        if found is None:
            return f"{module} is not installed"
    return None


def model_bytes(backend: str, model: Path | bytes) -> bytes:
    """Read the model, turning an unreadable file into `BackendUnavailable`."""
    if isinstance(model, bytes | bytearray | memoryview):
        return bytes(model)
    try:
        return Path(model).read_bytes()
    except OSError as exc:
        raise BackendUnavailable(backend, f"cannot read model {str(model)!r}: {exc}") from exc


def model_sha256(data: bytes) -> str:
    """Hex digest keying compiled-engine caches to the exact model bytes."""
    return hashlib.sha256(data).hexdigest()


def default_cache_dir(kind: str) -> Path:
    """Where compiled engines are kept when no cache path is configured (XDG cache home)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "otelai" / kind


def as_float32(backend: str, inputs: Mapping[str, Any], names: Sequence[str]) -> dict[str, FloatArray]:
    """Check input names and make each array C-contiguous float32 (a no-op when it already is)."""
    missing = [name for name in names if name not in inputs]
    if missing:
        raise ValueError(f"backend {backend!r}: missing inputs {missing} (model inputs: {list(names)})")
    return {name: np.ascontiguousarray(inputs[name], dtype=np.float32) for name in names}


def one_line(exc: BaseException) -> str:
    """An exception as one short line, for fallback reasons and log lines."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]
