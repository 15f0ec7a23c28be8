"""Which span reader :class:`~otelai.features.span_batch.SpanBatch` uses: numba's or numpy's.

The compiled reader (:mod:`otelai.features.span_decode_numba`) is imported lazily, so that
importing the features package does not import numba, and compiled once, on first use or at
:func:`prepare_decoder`. ``OTELAI_SPAN_DECODER`` chooses: ``auto`` (the default: numba when it
imports and compiles, else numpy), ``numba`` or ``numpy``. Either way a failure to load falls
back to numpy: the columns are the same, only slower.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from types import ModuleType
from typing import Literal

log = logging.getLogger("otelai.features")

Decoder = Literal["auto", "numba", "numpy"]
DECODER_ENV = "OTELAI_SPAN_DECODER"
_DECODERS = ("auto", "numba", "numpy")


class _CompiledReader:
    """The compiled reader, imported and compiled once, on first use, by whichever thread comes first."""

    lock = threading.Lock()
    module: ModuleType | None = None
    tried = False
    unknown: set[str] = set()


def prepare_decoder(decoder: Decoder | None = None) -> str:
    """Load (and compile) the span reader ``decoder`` asks for; the name of the one in use.

    ``decoder`` defaults to ``$OTELAI_SPAN_DECODER``, else ``auto``: the compiled reader when
    numba imports and compiles, else numpy. Compiling takes a few seconds the first time
    (numba's cache makes later starts fast); call this at start-up so the first batch does not
    pay it. Returns ``"numba"`` or ``"numpy"``.
    """
    return "numba" if compiled_reader(decoder) is not None else "numpy"


def compiled_reader(decoder: Decoder | None) -> ModuleType | None:
    """The compiled reader module when ``decoder`` (or the environment) selects it and it loads."""
    wanted = decoder or os.environ.get(DECODER_ENV, "auto")
    if wanted not in _DECODERS:
        if wanted not in _CompiledReader.unknown:  # once per value: this runs for every batch
            _CompiledReader.unknown.add(wanted)
            log.warning("unknown span decoder, using auto", extra={"decoder": wanted, "choices": _DECODERS})
        wanted = "auto"
    if wanted == "numpy":
        return None
    if not _CompiledReader.tried:
        with _CompiledReader.lock:
            if not _CompiledReader.tried:
                _CompiledReader.module = _load_compiled(required=wanted == "numba")
                _CompiledReader.tried = True
    return _CompiledReader.module


def _load_compiled(*, required: bool) -> ModuleType | None:
    try:
        module = importlib.import_module("otelai.features.span_decode_numba")
        module.warm_up()
    except ImportError as exc:
        level = logging.WARNING if required else logging.INFO
        log.log(level, "numba not available, spans are read with numpy", extra={"error": str(exc)})
        return None
    except Exception:  # a numba or LLVM failure: fail open to the numpy reader
        log.exception("compiling the span reader failed, spans are read with numpy")
        return None
    return module
