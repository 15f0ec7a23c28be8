"""Assembling the forwarded request from kept items, without re-encoding the items.

Kept spans (or log records) arrive as byte strings already carrying their tags; this groups
them back under their original resource and scope (whose bytes are copied from the parsed
request once per group) and writes the enclosing ``Export*ServiceRequest``.
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

# (request index, resource index, scope index): a scope group of one input request.
GroupKey = tuple[int, int, int]


class Assembler:
    """Collects kept items per scope group and writes one request for all of them.

    Parameters
    ----------
    resources_field, scopes_field
        Attribute names on the parsed messages: ``resource_spans``/``scope_spans`` for traces,
        ``resource_logs``/``scope_logs`` for logs.
    """

    def __init__(self, resources_field: str, scopes_field: str) -> None:
        self._resources_field = resources_field
        self._scopes_field = scopes_field
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
        """The request holding every added item; ``requests[i]`` is input request ``i`` parsed.

        Identical resources (and scopes within them) from different input requests are merged,
        so a batch of many small requests from one service forwards its resource once.
        """
        resources: dict[tuple[bytes, str], dict[tuple[bytes, str], list[bytes]]] = {}
        resource_keys: dict[tuple[int, int], tuple[bytes, str]] = {}
        for (request, resource, scope), items in self._groups.items():
            resource_msg = getattr(requests[request], self._resources_field)[resource]
            resource_key = resource_keys.get((request, resource))
            if resource_key is None:
                resource_key = (resource_msg.resource.SerializeToString(), resource_msg.schema_url)
                resource_keys[request, resource] = resource_key
            scoped = getattr(resource_msg, self._scopes_field)[scope]
            scope_key = (scoped.scope.SerializeToString(), scoped.schema_url)
            resources.setdefault(resource_key, {}).setdefault(scope_key, []).extend(items)
        out: list[bytes] = []
        for (resource_bytes, resource_url), scopes in resources.items():
            body = [field(CONTAINER_FIRST, resource_bytes)]
            for (scope_bytes, scope_url), items in scopes.items():
                body.append(field(CONTAINER_ITEMS, _container(scope_bytes, items, scope_url)))
            if resource_url:
                body.append(field(CONTAINER_SCHEMA_URL, resource_url.encode()))
            out.append(field(REQUEST_ITEMS, b"".join(body)))
        return b"".join(out)


def _container(first: bytes, items: list[bytes], schema_url: str) -> bytes:
    body = [field(CONTAINER_FIRST, first)]
    body.extend(field(CONTAINER_ITEMS, item) for item in items)
    if schema_url:
        body.append(field(CONTAINER_SCHEMA_URL, schema_url.encode()))
    return b"".join(body)
