"""Detectors loaded from a model bundle, by kind (entry point group ``otelai.detectors``).

A bundled detector is a :class:`~otelai.detectors.base.Detector` class with a ``from_spec``
class method that builds it from its bundle entry (:class:`~otelai.models.bundle.DetectorSpec`)
and the files of the bundle, serving any ONNX graph through the configured inference backends.
Built-ins register the same way third-party plugins do (``pyproject.toml``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Protocol

from otelai.backends.select import FallbackCallback
from otelai.detectors.base import Detector

if TYPE_CHECKING:
    from otelai.models.bundle import Bundle, DetectorSpec

ENTRY_POINT_GROUP = "otelai.detectors"


@dataclass(frozen=True, slots=True)
class Serving:
    """How a bundled detector runs its graphs: the backend fallback order and its options."""

    backend_order: Sequence[str] = ("onnxruntime",)
    backend_options: Mapping[str, Mapping[str, Any]] | None = None
    on_fallback: FallbackCallback | None = None


class BundledDetector(Protocol):
    @classmethod
    def from_spec(cls, bundle: Bundle, spec: DetectorSpec, serving: Serving) -> Detector: ...


def detector_kinds() -> dict[str, str]:
    """Registered kinds and their ``module:Class``."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load_detector(bundle: Bundle, spec: DetectorSpec, serving: Serving) -> Detector:
    """Build the detector ``spec`` describes; BundleError if its kind is not installed."""
    from otelai.models.bundle import BundleError

    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == spec.kind]
    if not found:
        known = ", ".join(sorted(detector_kinds())) or "none"
        raise BundleError(
            f"bundle {bundle.path}: detector {spec.name!r} is of kind {spec.kind!r}, "
            f"which this otelai does not have (installed: {known})"
        )
    plugin: BundledDetector = found[0].load()
    return plugin.from_spec(bundle, spec, serving)
