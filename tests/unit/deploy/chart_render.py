"""Rendering ``helm/otelai`` in-process with Helm's own Go SDK (``helm-python-sdk``).

``helm-python-sdk`` binds ``libhelm_c`` (Helm v4's Go SDK behind a C ABI, shipped inside the
wheel), so ``lint`` and ``render`` here are the real Helm engine without a ``helm`` binary or a
cluster; ``lookup`` returns nothing, as in ``helm template``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "helm" / "otelai"
CI_VALUES = CHART / "ci"
RELEASE = "otelai"
NAMESPACE = "observability"

Manifest = dict[str, Any]

#: The environment the chart gives the container (``${env:...}`` in the config reads it).
POD_ENV = {"POD_NAME": "otelai-0", "POD_NAMESPACE": NAMESPACE, "NODE_NAME": "node-1", "POD_IP": "10.0.0.7"}


def ci_values() -> dict[str, dict[str, Any]]:
    """The chart's ``ci/*-values.yaml`` scenarios by file stem."""
    return {path.stem: yaml.safe_load(path.read_text()) or {} for path in sorted(CI_VALUES.glob("*.yaml"))}


def merge(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge of values layers, later ones winning (as repeated ``-f`` files)."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, Mapping) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value)
            else:
                out[key] = value
    return out


class Rendered:
    """The manifests of one render, by template path, NOTES.txt aside."""

    def __init__(self, templates: Mapping[str, str]) -> None:
        self.notes = ""
        self.by_template: dict[str, list[Manifest]] = {}
        for path, text in templates.items():
            if path.endswith("NOTES.txt"):
                self.notes = text
                continue
            docs = [doc for doc in yaml.safe_load_all(text) if doc]
            if docs:
                self.by_template[path] = docs

    def __iter__(self) -> Iterator[Manifest]:
        for docs in self.by_template.values():
            yield from docs

    def kinds(self) -> list[str]:
        return sorted(doc["kind"] for doc in self)

    def one(self, kind: str, name: str | None = None) -> Manifest:
        found = [doc for doc in self if doc["kind"] == kind and name in (None, doc["metadata"]["name"])]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}: {self.kinds()}"
        return found[0]

    def workload(self) -> Manifest:
        found = [doc for doc in self if doc["kind"] in ("Deployment", "DaemonSet", "StatefulSet")]
        assert len(found) == 1, f"expected one workload, found {self.kinds()}"
        return found[0]

    def container(self) -> dict[str, Any]:
        containers: list[dict[str, Any]] = self.workload()["spec"]["template"]["spec"]["containers"]
        return next(c for c in containers if c["name"] == "otelai")

    def config_text(self) -> str:
        """The service configuration file the ConfigMap carries."""
        return str(self.one("ConfigMap", RELEASE)["data"]["config.yaml"])


class Chart:
    """A loaded chart; render it as often as needed, then ``close()``."""

    def __init__(self, path: Path = CHART) -> None:
        self.path = path
        self._chart = helm.Chart.load(path)

    def render(self, values: Mapping[str, Any] | None = None, *, namespace: str = NAMESPACE) -> Rendered:
        return Rendered(self._chart.render(dict(values or {}), name=RELEASE, namespace=namespace))

    def close(self) -> None:
        self._chart.close()


def lint(values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``helm lint --strict`` of the chart with ``values``."""
    return helm.lint(CHART, dict(values or {}), strict=True, namespace=NAMESPACE)
