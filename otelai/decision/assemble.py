"""Assembling the forwarded request from kept items, without re-encoding the items.

Kept spans (or log records) arrive as byte strings already carrying their tags; this groups
them back under their original resource and scope (whose bytes are copied from the request's
skeleton, :data:`~otelai.features.otlp_layout.SkeletonRequest`: the containers parsed, the
items and the Resource and scope left as bytes) and writes the enclosing
``Export*ServiceRequest``.

The trace hop's compiled path (:mod:`otelai.decision.assemble_numba`) hands over a scope's
items already encoded, as one region (:meth:`Assembler.add_encoded`), and the containers as
byte ranges into the request (:class:`RangedRequest`) in place of a skeleton.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cache
from typing import Any

import numpy as np
from numpy.typing import NDArray

from otelai.decision.tagging import (
    CONTAINER_FIRST,
    CONTAINER_ITEMS,
    CONTAINER_SCHEMA_URL,
    REQUEST_ITEMS,
    field,
)
from otelai.features.otlp_layout import SkeletonRequest, parse_skeleton
from otelai.kernels import load_kernels

# (request index, resource index, scope index): a scope group of one input request.
GroupKey = tuple[int, int, int]
# A Resource's (or scope's) bytes and its schema_url: what identical containers share.
ContainerKey = tuple[bytes, bytes]

# "python" (or "numpy", as for every kernel) keeps the Python path where numba is installed.
KERNEL_ENV = "OTELAI_ASSEMBLY_KERNEL"

# Columns of RangedRequest's rows (written by assemble_numba.containers). A resource row: its
# Resource's and schema_url's byte ranges, its first scope row and scope count; a scope row:
# its InstrumentationScope's and schema_url's byte ranges.
RESOURCE_START, RESOURCE_END, RESOURCE_URL_START, RESOURCE_URL_END = 0, 1, 2, 3
RESOURCE_FIRST_SCOPE, RESOURCE_SCOPES = 4, 5
RESOURCE_COLUMNS = 6
SCOPE_START, SCOPE_END, SCOPE_URL_START, SCOPE_URL_END = 0, 1, 2, 3
SCOPE_COLUMNS = 4


class RangedRequest:
    """One request's containers as byte ranges into its bytes: what :class:`Assembler` reads
    of a skeleton, without parsing the request (the ranges come from
    :func:`otelai.decision.assemble_numba.containers`).

    Parameters
    ----------
    data
        The serialised request.
    resources, scopes
        Rows as the column constants of this module describe them; resource ``i``'s scope
        ``j`` is scope row ``resources[i, RESOURCE_FIRST_SCOPE] + j``. An absent field's
        range is empty, as upb reads it.
    """

    __slots__ = ("data", "resources", "scopes")

    def __init__(self, data: bytes, resources: NDArray[np.int64], scopes: NDArray[np.int64]) -> None:
        self.data = data
        self.resources = resources
        self.scopes = scopes

    def containers(self, resource: int, scope: int) -> tuple[ContainerKey, ContainerKey]:
        """(Resource bytes, schema_url) of ``resource`` and (scope bytes, schema_url) of its
        ``scope``; IndexError for one the request does not have."""
        if resource < 0:  # numpy would count from the end
            raise IndexError(f"resource {resource} out of range")
        start, end, url_start, url_end, first, count = self.resources[resource].tolist()
        if not 0 <= scope < count:
            raise IndexError(f"scope {scope} out of range")
        scope_start, scope_end, scope_url_start, scope_url_end = self.scopes[first + scope].tolist()
        data = self.data
        return (
            (data[start:end], data[url_start:url_end]),
            (data[scope_start:scope_end], data[scope_url_start:scope_url_end]),
        )


class Assembler:
    """Collects kept items per scope group and writes one request for all of them.

    Traces and logs alike: their requests have the same container levels. Items are kept
    encoded (as the scope's repeated field 2), one at a time (:meth:`add`) or a run at a time
    (:meth:`add_encoded`); either way a group's items go out in the order they came.
    """

    def __init__(self) -> None:
        self._groups: dict[GroupKey, list[bytes]] = {}
        self.items = 0

    def add(self, key: GroupKey, item: bytes) -> None:
        """One kept item (the item message's bytes, without its own tag and length)."""
        encoded = field(CONTAINER_ITEMS, item)
        group = self._groups.get(key)
        if group is None:
            self._groups[key] = [encoded]
        else:
            group.append(encoded)
        self.items += 1

    def add_encoded(self, key: GroupKey, region: bytes, count: int) -> None:
        """``count`` kept items, each already written as the scope's field 2 (tag, length,
        bytes), back to back in ``region``."""
        group = self._groups.get(key)
        if group is None:
            self._groups[key] = [region]
        else:
            group.append(region)
        self.items += count

    def build(self, requests: Sequence[Any]) -> bytes:
        """The request holding every added item; ``requests[i]`` is input request ``i`` as
        :func:`skeleton` reads it, or as a :class:`RangedRequest`.

        Identical resources (and scopes within them) from different input requests are merged,
        so a batch of many small requests from one service forwards its resource once.
        """
        resources: dict[ContainerKey, dict[ContainerKey, list[bytes]]] = {}
        for (request, resource, scope), items in self._groups.items():
            source = requests[request]
            if isinstance(source, RangedRequest):
                resource_key, scope_key = source.containers(resource, scope)
            else:
                container = source.resources[resource]
                scoped = container.scopes[scope]
                resource_key = (container.resource, container.schema_url)
                scope_key = (scoped.scope, scoped.schema_url)
            resources.setdefault(resource_key, {}).setdefault(scope_key, []).extend(items)
        out: list[bytes] = []
        for (resource_bytes, resource_url), scopes in resources.items():
            body = [field(CONTAINER_FIRST, resource_bytes)]
            for (scope_bytes, scope_url), items in scopes.items():
                body.append(field(CONTAINER_ITEMS, _container(scope_bytes, items, scope_url)))
            if resource_url:
                body.append(field(CONTAINER_SCHEMA_URL, resource_url))
            out.append(field(REQUEST_ITEMS, b"".join(body)))
        return b"".join(out)


def _container(first: bytes, items: list[bytes], schema_url: bytes) -> bytes:
    """A scope message: its scope, its ``items`` (encoded fields) and its schema_url."""
    body = [field(CONTAINER_FIRST, first)]
    body.extend(items)
    if schema_url:
        body.append(field(CONTAINER_SCHEMA_URL, schema_url))
    return b"".join(body)


def skeleton(data: bytes) -> Any:
    """The containers of a serialised trace or logs export request, items left as bytes
    (a fraction of a full parse). Raises :class:`~otelai.features.wire.WireError`."""
    return parse_skeleton(SkeletonRequest, data)


@cache
def assembly_kernels() -> Any:
    """The compiled kernels' module (:mod:`otelai.decision.assemble_numba`), or None: numba
    missing, or ``OTELAI_ASSEMBLY_KERNEL`` set to ``python`` or ``numpy``."""
    if os.environ.get(KERNEL_ENV) == "python":
        return None
    return load_kernels("otelai.decision.assemble_numba", KERNEL_ENV, "traces are assembled in Python")
