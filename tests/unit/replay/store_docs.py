"""Span documents in exactly the layout the otel-demo OpenSearch store keeps, with made-up values."""

from __future__ import annotations

import copy
import gzip
import json
from pathlib import Path
from typing import Any

TRACE_ID = "cda2606fa3fe8d7aa59a37a8778a7c0f"
SPAN_ID = "4c92c9b94e323209"
PARENT_ID = "f88d0edd23415b87"
LINK_TRACE_ID = "d2f89118a6062254de7f7f95b1e2960e"
LINK_SPAN_ID = "9876632227f84399"

RESOURCE = {
    "host.name": "262f53319fbe",
    "os.type": "linux",
    "process.pid": "1",
    "service.name": "product-catalog",
    "service.namespace": "opentelemetry-demo",
    "service.version": "2.1.3",
    "telemetry.sdk.language": "go",
}
SCOPE = {
    "droppedAttributesCount": 0,
    "name": "go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc",
    "schemaUrl": "https://opentelemetry.io/schemas/1.11.0",
    "version": "0.63.0",
}

# One hit of the store, as in traces_W.json.gz: every field the real files carry.
HIT: dict[str, Any] = {
    "_index": "otel-traces-2026-02-06",
    "_id": "mgp6NpwBQni_kOJF57z7",
    "_score": None,
    "_source": {
        "attributes": {
            "app.product.id": "9SIQT8TOJO",
            "data_stream": {"dataset": "default", "namespace": "namespace", "type": "span"},
            "rpc.grpc.status_code": 0,
            "rpc.method": "GetProduct",
            "server.port": 59158,
            "app.cart.empty": False,
            "app.quote.cost.total": 43.5,
            "app.filtered_products.list": ["1YMWWN1N4O", "6E92ZMYYFZ"],
        },
        "droppedAttributesCount": 2,
        "droppedEventsCount": 3,
        "droppedLinksCount": 4,
        "endTime": "2026-02-06T15:17:28.771664353Z",
        "events": [
            {
                "attributes": {"app.product.quantity": 7, "exception.escaped": True},
                "droppedAttributesCount": 1,
                "name": "Product Found",
                "@timestamp": "2026-02-06T15:17:28.77158869Z",
            },
            {
                "attributes": {},
                "droppedAttributesCount": 0,
                "name": "exception",
                "@timestamp": "2026-02-06T15:17:28.771601Z",
            },
        ],
        "instrumentationScope": SCOPE,
        "kind": "Server",
        "links": [{"spanId": LINK_SPAN_ID, "traceId": LINK_TRACE_ID}],
        "name": "oteldemo.ProductCatalogService/GetProduct",
        "parentSpanId": PARENT_ID,
        "resource": RESOURCE,
        "spanId": SPAN_ID,
        "startTime": "2026-02-06T15:17:28.771542124Z",
        "status": {"code": "Error", "message": "product not found"},
        "@timestamp": "0001-01-01T00:00:00Z",
        "traceId": TRACE_ID,
        "traceState": "ot=th:0",
    },
    "sort": [1770391048771],
}


def hit(**source: Any) -> dict[str, Any]:
    """A copy of :data:`HIT` with ``_source`` fields replaced (``None`` removes a field)."""
    doc = copy.deepcopy(HIT)
    for key, value in source.items():
        if value is None:
            doc["_source"].pop(key, None)
        else:
            doc["_source"][key] = value
    return doc


def span_id(n: int) -> str:
    return f"{n:016x}"


def simple_hit(n: int, start: str, **source: Any) -> dict[str, Any]:
    """A plain span ``n`` starting at ``start`` (no events or links)."""
    return hit(spanId=span_id(n + 1), startTime=start, endTime=start, events=None, links=None, **source)


def write_window(
    folder: Path, name: str, hits: list[dict[str, Any]] | None, metadata: dict[str, Any] | None = None
) -> Path:
    """``traces_<name>.json.gz`` (unless ``hits`` is None) and ``metadata_<name>.json`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    traces = folder / f"traces_{name}.json.gz"
    if hits is not None:
        with gzip.open(traces, "wt", encoding="utf-8") as stream:
            json.dump(hits, stream)
    if metadata is not None:
        (folder / f"metadata_{name}.json").write_text(json.dumps(metadata))
    return traces
