"""Assembling the forwarded request from kept items, without re-encoding the items.

Kept spans (or log records) arrive as byte strings already carrying their tags; this groups
them back under their original resource and scope (whose bytes are copied from the request's
skeleton, :data:`~otelai.features.otlp_layout.SkeletonRequest`: the containers parsed, the
items and the Resource and scope left as bytes) and writes the enclosing
``Export*ServiceRequest``.
"""

from __future__ import annotations

from typing import Any

from otelai.decision.tagging import (
    CONTAINER_FIRST,
    CONTAINER_ITEMS,
    CONTAINER_SCHEMA_URL,
    REQUEST_ITEMS,
    field,
)
from otelai.features.otlp_layout import SkeletonRequest, parse_skeleton

# (request index, resource index, scope index): a scope group of one input request.
GroupKey = tuple[int, int, int]


class Assembler:
    """Collects kept items per scope group and writes one request for all of them.

    Traces and logs alike: their requests have the same container levels.
    """

    def __init__(self) -> None:
        self._groups: dict[GroupKey, list[bytes]] = {}
        self.items = 0

    def add(self, key: GroupKey, item: bytes) -> None:
        """One kept item (the item message's bytes, without its own tag and length)."""
        group = self._groups.get(key)
        if group is None:
            self._groups[key] = [item]
        else:
            group.append(item)
        self.items += 1

    def build(self, requests: list[Any]) -> bytes:
        """The request holding every added item; ``requests[i]`` is input request ``i`` as
        :func:`skeleton` reads it.

        Identical resources (and scopes within them) from different input requests are merged,
        so a batch of many small requests from one service forwards its resource once.
        """
        resources: dict[tuple[bytes, bytes], dict[tuple[bytes, bytes], list[bytes]]] = {}
        for (request, resource, scope), items in self._groups.items():
            container = requests[request].resources[resource]
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
    body = [field(CONTAINER_FIRST, first)]
    body.extend(field(CONTAINER_ITEMS, item) for item in items)
    if schema_url:
        body.append(field(CONTAINER_SCHEMA_URL, schema_url))
    return b"".join(body)


def skeleton(data: bytes) -> Any:
    """The containers of a serialised trace or logs export request, items left as bytes
    (a fraction of a full parse). Raises :class:`~otelai.features.wire.WireError`."""
    return parse_skeleton(SkeletonRequest, data)
