"""Small dense integer ids for services and operations, stable for the life of the process.

An operation is a (service, span name) pair, the key of the per-operation baselines. Ids are
handed out in order of first sight, so a model or a baseline can index arrays by them. Span
names are a known cardinality hazard (names built from URLs or SQL text), so both tables are
capped: past the cap, new names get :data:`OVERFLOW` and share the global baselines.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

OVERFLOW = -1
UNKNOWN = -2  # from :meth:`Interner.hashed_operations`: a key not remembered yet
UNKNOWN_SERVICE = "unknown_service"  # what the OpenTelemetry SDKs report when service.name is unset


class Interner:
    """Maps service names and (service id, span name) pairs to dense ids.

    Parameters
    ----------
    max_services
        Most distinct services; later ones get :data:`OVERFLOW`.
    max_operations
        Most distinct operations; later ones get :data:`OVERFLOW`.
    """

    def __init__(self, *, max_services: int = 10_000, max_operations: int = 100_000) -> None:
        self.max_services = max_services
        self.max_operations = max_operations
        self._services: dict[str, int] = {}
        self._service_names: list[str] = []
        self._operations: dict[tuple[int, str], int] = {}
        self._operation_keys: list[tuple[int, str]] = []
        self.overflowed = 0  # lookups that got OVERFLOW, for a metric
        # Operation ids by a reader's 64-bit hash of (service id, name), sorted by key: a batch
        # whose operations are all known is looked up in a few numpy calls, no Python per name.
        self._hashed_keys: NDArray[np.uint64] = np.zeros(0, dtype=np.uint64)
        self._hashed_ids: NDArray[np.int32] = np.zeros(0, dtype=np.int32)

    def service(self, name: str) -> int:
        """The id of service ``name`` (``""`` counts as :data:`UNKNOWN_SERVICE`)."""
        name = name or UNKNOWN_SERVICE
        found = self._services.get(name)
        if found is not None:
            return found
        if len(self._service_names) >= self.max_services:
            self.overflowed += 1
            return OVERFLOW
        self._services[name] = len(self._service_names)
        self._service_names.append(name)
        return self._services[name]

    def operation(self, service_id: int, name: str) -> int:
        """The id of span name ``name`` in service ``service_id``."""
        key = (service_id, name)
        found = self._operations.get(key)
        if found is not None:
            return found
        if len(self._operation_keys) >= self.max_operations:
            self.overflowed += 1
            return OVERFLOW
        self._operations[key] = len(self._operation_keys)
        self._operation_keys.append(key)
        return self._operations[key]

    def hashed_operations(self, keys: NDArray[np.uint64]) -> NDArray[np.int32]:
        """The operation id remembered for each key (:meth:`remember_hashed`), :data:`UNKNOWN` if none."""
        stored = self._hashed_keys
        if not stored.size:
            return np.full(keys.size, UNKNOWN, dtype=np.int32)
        slot = np.minimum(np.searchsorted(stored, keys), stored.size - 1)
        found: NDArray[np.int32] = np.where(stored.take(slot) == keys, self._hashed_ids.take(slot), UNKNOWN)
        return found.astype(np.int32, copy=False)

    def hashed_table(self) -> tuple[NDArray[np.uint64], NDArray[np.int32]]:
        """The remembered keys (sorted, unique) and their operation ids, for a compiled lookup.

        Read only: :meth:`remember_hashed` replaces them rather than changing them in place.
        """
        return self._hashed_keys, self._hashed_ids

    def remember_hashed(self, keys: NDArray[np.uint64], ids: NDArray[np.int32]) -> None:
        """Remember operation ``ids`` under ``keys`` (unique, not remembered yet).

        The caller guarantees a key stands for one (service id, name) for the life of this
        interner (a 64-bit hash over the name's bytes). :data:`OVERFLOW` ids are not kept:
        those names are looked up (and counted in ``overflowed``) every time.
        """
        keep = ids != OVERFLOW
        if not keep.any():
            return
        merged_keys = np.concatenate((self._hashed_keys, keys[keep]))
        merged_ids = np.concatenate((self._hashed_ids, ids[keep].astype(np.int32)))
        order = np.argsort(merged_keys, kind="stable")
        self._hashed_keys, self._hashed_ids = merged_keys.take(order), merged_ids.take(order)

    def service_name(self, service_id: int) -> str:
        """The name behind a service id (``""`` for :data:`OVERFLOW`)."""
        return self._service_names[service_id] if service_id >= 0 else ""

    def operation_name(self, operation_id: int) -> tuple[str, str]:
        """``(service name, span name)`` behind an operation id (empty for :data:`OVERFLOW`)."""
        if operation_id < 0:
            return ("", "")
        service_id, name = self._operation_keys[operation_id]
        return (self.service_name(service_id), name)

    @property
    def services(self) -> int:
        return len(self._service_names)

    @property
    def operations(self) -> int:
        return len(self._operation_keys)
