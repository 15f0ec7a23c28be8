"""Small dense integer ids for services and operations, stable for the life of the process.

An operation is a (service, span name) pair, the key of the per-operation baselines. Ids are
handed out in order of first sight, so a model or a baseline can index arrays by them. Span
names are a known cardinality hazard (names built from URLs or SQL text), so both tables are
capped: past the cap, new names get :data:`OVERFLOW` and share the global baselines.
"""

from __future__ import annotations

OVERFLOW = -1
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
