"""Choosing a backend: the configured order, tried one by one, with a clean fallback.

Plugins are found under the ``otelai.backends`` entry point group (built-ins register there
like any third-party plugin). At start-up each candidate is probed, built and given a tiny smoke
batch; the first that passes serves. At run time `FallbackBackend` moves on to the next one
after a run of consecutive failures, while the scoring stage fails open for the failed batches.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

import numpy as np

from otelai.backends.base import Backend, BackendUnavailable, FloatArray, NoBackendAvailable, one_line

__all__ = [
    "ENTRY_POINT_GROUP",
    "FallbackBackend",
    "FallbackCallback",
    "backend_class",
    "installed_backends",
    "load_backend",
    "probe_all",
    "smoke_test",
]

ENTRY_POINT_GROUP = "otelai.backends"
#: Called as ``(from_backend, to_backend, reason)`` each time one backend gives way to the next.
FallbackCallback = Callable[[str, str, str], None]

_log = logging.getLogger("otelai.backends")


def installed_backends() -> dict[str, EntryPoint]:
    """The registered backend plugins by name (nothing is imported)."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def backend_class(name: str) -> type[Backend]:
    """Import the plugin registered as ``name``.

    Raises
    ------
    ValueError
        When no plugin is registered under ``name``; the message lists the installed ones.
    BackendUnavailable
        When the plugin module cannot be imported or is not a `Backend`.
    """
    installed = installed_backends()
    if name not in installed:
        known = ", ".join(sorted(installed)) or "none"
        raise ValueError(f"unknown backend {name!r} (installed in {ENTRY_POINT_GROUP!r}: {known})")
    try:
        plugin = installed[name].load()
    except Exception as exc:  # a broken plugin is a fallback reason, not a crash
        raise BackendUnavailable(
            name, f"cannot import plugin {installed[name].value!r}: {one_line(exc)}"
        ) from exc
    if not (isinstance(plugin, type) and issubclass(plugin, Backend)):
        raise BackendUnavailable(name, f"plugin {installed[name].value!r} is not an otelai Backend")
    if plugin.name != name:
        # Metric labels and fallback order use the registered name; the two must agree.
        raise BackendUnavailable(name, f"plugin {installed[name].value!r} calls itself {plugin.name!r}")
    return plugin


def probe_all() -> dict[str, str | None]:
    """Probe every installed backend: name -> None (usable) or the reason it is not."""
    result: dict[str, str | None] = {}
    for name in sorted(installed_backends()):
        try:
            result[name] = backend_class(name).probe()
        except BackendUnavailable as exc:
            result[name] = exc.reason
    return result


def smoke_test(backend: Backend, *, batch: int = 2) -> None:
    """Run a batch of zeros and check that every output is float32 with ``batch`` rows.

    Raises
    ------
    BackendUnavailable
        When the run fails or its outputs are malformed (a broken model, device or driver).
    """
    inputs: dict[str, FloatArray] = {
        name: np.zeros((batch, *(dim or 1 for dim in shape[1:])), dtype=np.float32)
        for name, shape in backend.input_shapes.items()
    }
    try:
        outputs = backend.run(inputs)
    except Exception as exc:
        raise BackendUnavailable(backend.name, f"smoke run failed: {one_line(exc)}") from exc
    for name in backend.output_names:
        out = outputs.get(name)
        if out is None or out.dtype != np.float32 or out.ndim == 0 or out.shape[0] != batch:
            got = "missing" if out is None else f"{out.dtype} {out.shape}"
            raise BackendUnavailable(
                backend.name, f"smoke run: output {name!r} is {got}, want float32 ({batch}, ...)"
            )


def _resolve(
    order: Sequence[str], options: Mapping[str, Mapping[str, Any]]
) -> list[tuple[str, type[Backend] | str]]:
    """Check the order and options up front: configuration errors are errors on every machine."""
    if not order:
        raise ValueError("backend order is empty")
    if len(set(order)) != len(order):
        raise ValueError(f"backend order names a backend twice: {list(order)}")
    installed = installed_backends()
    for name in [*order, *options]:
        if name not in installed:
            known = ", ".join(sorted(installed)) or "none"
            raise ValueError(f"unknown backend {name!r} (installed in {ENTRY_POINT_GROUP!r}: {known})")
    resolved: list[tuple[str, type[Backend] | str]] = []
    for name in order:
        try:
            cls = backend_class(name)
        except BackendUnavailable as exc:
            resolved.append((name, exc.reason))
            continue
        cls.validate_options(options.get(name))
        resolved.append((name, cls))
    return resolved


def _attempt(cls: type[Backend], model: Path | bytes, options: Mapping[str, Any] | None) -> Backend | str:
    """Probe, build and smoke-test one backend: the backend, or the reason it cannot serve."""
    try:
        reason = cls.probe()
    except Exception as exc:  # a probe must not crash start-up, even a buggy one
        reason = f"probe failed: {one_line(exc)}"
    if reason is not None:
        return reason
    try:
        backend = cls(model, options=options)
    except BackendUnavailable as exc:
        return exc.reason
    except Exception as exc:
        return f"unexpected error while loading: {one_line(exc)}"
    try:
        smoke_test(backend)
    except BackendUnavailable as exc:
        backend.close()
        return exc.reason
    return backend


def _notify(on_fallback: FallbackCallback | None, source: str, target: str, reason: str) -> None:
    _log.warning("backend %s unavailable, falling back to %s: %s", source, target, reason)
    if on_fallback is None:
        return
    try:
        on_fallback(source, target, reason)
    except Exception:  # a metrics hook must not stop the service from finding a backend
        _log.exception("backend fallback callback failed")


def load_backend(
    order: Sequence[str],
    model: Path | bytes,
    *,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    on_fallback: FallbackCallback | None = None,
) -> Backend:
    """Build the first backend in ``order`` that works here.

    Each candidate is probed, built and smoke-tested on a batch of two; when one fails, one
    warning names it, the next candidate and the reason, and ``on_fallback(from, to, reason)``
    is called (the service counts ``otelai_backend_fallbacks_total{from,to}``).

    Parameters
    ----------
    order
        Backend names, most preferred first (``["tensorrt", "cuda", "openvino", "onnxruntime"]``).
    model
        The ONNX model, as a path or bytes.
    options
        Per backend name, that backend's options.
    on_fallback
        Called once for each backend that gives way to the next.

    Raises
    ------
    ValueError
        An unknown backend name, a repeated one, or an unknown option (configuration errors).
    NoBackendAvailable
        Every backend failed; its ``reasons`` say why, per backend.
    """
    options = options or {}
    candidates = _resolve(order, options)
    reasons: dict[str, str] = {}
    for index, (name, cls) in enumerate(candidates):
        result = cls if isinstance(cls, str) else _attempt(cls, model, options.get(name))
        if isinstance(result, Backend):
            return result
        reasons[name] = result
        if index + 1 < len(candidates):
            _notify(on_fallback, name, candidates[index + 1][0], result)
        else:
            _log.error("backend %s unavailable, no backend left: %s", name, result)
    raise NoBackendAvailable(reasons)


class FallbackBackend(Backend):
    """A backend that gives way to the next in its order after repeated run-time failures.

    ``run`` still raises on a failed batch (the scoring stage fails open for it, forwarding the
    items tagged ``fail_open``); after ``max_consecutive_failures`` failures in a row the backend
    in use is closed and the rest of the order is loaded in its place, reported through
    ``on_fallback`` like a start-up fallback. A ``ValueError`` (the caller's inputs are wrong)
    does not count. A backend once left is not returned to: a restart
    retries the whole order. When the order is exhausted the last backend is kept.

    Parameters
    ----------
    order, model, options, on_fallback
        As for `load_backend`, which builds the first backend.
    max_consecutive_failures
        Failed runs in a row that retire the backend in use.
    """

    name = "fallback"

    def __init__(
        self,
        order: Sequence[str],
        model: Path | bytes,
        *,
        options: Mapping[str, Mapping[str, Any]] | None = None,
        on_fallback: FallbackCallback | None = None,
        max_consecutive_failures: int = 3,
    ) -> None:
        if max_consecutive_failures < 1:
            raise ValueError("max_consecutive_failures must be >= 1")
        self._order = list(order)
        self._model = model
        self._options = dict(options or {})
        self._on_fallback = on_fallback
        self._max_failures = max_consecutive_failures
        self._lock = threading.Lock()
        self._current = load_backend(self._order, model, options=self._options, on_fallback=on_fallback)
        self._failures = 0
        self._exhausted = False
        self._closed = False

    @classmethod
    def probe(cls) -> str | None:
        return None

    @property
    def current(self) -> Backend:
        """The backend serving now (its ``name`` labels inference metrics)."""
        return self._current

    @property
    def input_names(self) -> tuple[str, ...]:
        return self._current.input_names

    @property
    def output_names(self) -> tuple[str, ...]:
        return self._current.output_names

    @property
    def input_shapes(self) -> Mapping[str, tuple[int | None, ...]]:
        return self._current.input_shapes

    def run(self, inputs: Mapping[str, FloatArray]) -> dict[str, FloatArray]:
        backend = self._current
        try:
            outputs = backend.run(inputs)
        except ValueError:
            raise  # the caller's inputs are wrong (missing name); no reason to leave the backend
        except Exception as exc:
            self._failed(backend, exc)
            raise
        self._failures = 0
        return outputs

    def _failed(self, backend: Backend, exc: Exception) -> None:
        with self._lock:
            if backend is not self._current or self._closed:
                return  # another thread already replaced it
            self._failures += 1
            if self._failures < self._max_failures:
                return
            self._failures = 0
            remaining = self._order[self._order.index(backend.name) + 1 :]
            if not remaining:
                if not self._exhausted:  # once: the scoring stage counts every failed batch
                    _log.error(
                        "backend %s keeps failing and no backend is left: %s", backend.name, one_line(exc)
                    )
                self._exhausted = True
                return
            reason = f"{self._max_failures} consecutive run failures, last: {one_line(exc)}"
            _notify(self._on_fallback, backend.name, remaining[0], reason)
            try:
                replacement = load_backend(
                    remaining, self._model, options=self._options, on_fallback=self._on_fallback
                )
            except NoBackendAvailable as err:
                _log.error("backend %s keeps failing and no other loads: %s", backend.name, err)
                self._order = self._order[: self._order.index(backend.name) + 1]
                return
            self._current = replacement
        backend.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._current.close()
