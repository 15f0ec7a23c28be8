"""Loading the optional compiled (numba) kernels of the hot paths.

Several per-batch steps have a numba kernel module beside a numpy implementation with the same
results (the baseline merge, the calibration window, the trace index): numba is in the ``fast``
extra, the dev set and the images, not a hard dependency. Each module is loaded once, when its
first user is made, and warmed up (compiled, or loaded from numba's on-disk cache) so the first
batch does not pay for it. numba missing or failing falls back to numpy with one log line; an
environment variable set to ``numpy`` forces the fallback (the tests and benchmarks compare the
two).
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar, cast

log = logging.getLogger("otelai.kernels")

F = TypeVar("F", bound=Callable[..., Any])


def load_kernels(module: str, env: str, fallback: str) -> Any:
    """The kernel module ``module``, warmed up (its ``warm_up()``, if it has one), or None.

    Parameters
    ----------
    module
        Dotted name of the numba module.
    env
        Environment variable that, set to ``numpy``, keeps the numpy path.
    fallback
        What runs on numpy instead, for the log line ("calibration runs on numpy").
    """
    if os.environ.get(env, "auto") == "numpy":
        return None
    try:
        loaded = importlib.import_module(module)
        warm_up = getattr(loaded, "warm_up", None)
        if warm_up is not None:
            warm_up()
    except Exception as exc:  # numba missing or broken: the numpy path gives the same results
        log.info("numba not available, %s", fallback, extra={"error": str(exc)})
        return None
    return loaded


def cached_jit(what: str) -> Callable[[F], F]:
    """A decorator: ``numba.njit(nogil=True)`` with numba's on-disk cache where it can write one.

    numba refuses ``cache=True`` (RuntimeError, at decoration) when neither ``__pycache__``
    beside the module nor the user cache directory is writable, as in a read-only install with
    a read-only home; then the kernel is compiled at every start instead, with one warning
    naming ``what``. Only the kernel modules call this (they import numba anyway).
    """
    import numba

    def decorate(func: F) -> F:
        try:
            jitted = numba.njit(cache=True, nogil=True)(func)
        except RuntimeError as exc:
            log.warning("numba cache unavailable, compiling %s at start-up", what, extra={"error": str(exc)})
            jitted = numba.njit(cache=False, nogil=True)(func)
        return cast(F, jitted)

    return decorate
