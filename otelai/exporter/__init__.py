"""Exporters: where forwarded requests go, found by their configuration ``type``.

Built-in exporters register under the ``otelai.exporters`` entry point group exactly as a
third-party plugin would; the plugin module is imported only when an exporter of its type
is built, so this package stays cheap to import.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import cast

from otelai.config import ExporterConfig
from otelai.exporter.base import Exporter, ExportOutcome, ExportResult

ENTRY_POINT_GROUP = "otelai.exporters"

__all__ = [
    "ENTRY_POINT_GROUP",
    "ExportOutcome",
    "ExportResult",
    "Exporter",
    "ExporterNotFoundError",
    "build_exporter",
]


class ExporterNotFoundError(LookupError):
    """No installed plugin provides the configured exporter type."""


def build_exporter(name: str, config: ExporterConfig) -> Exporter:
    """Build the exporter ``name`` from its settings, through its entry point.

    Parameters
    ----------
    name
        The exporter's key under ``exporters`` (``otlp``, ``otlp/backup``).
    config
        Its settings; ``config.type`` selects the plugin.

    Raises
    ------
    ExporterNotFoundError
        When no plugin is registered for ``config.type``, or it cannot be imported.
    ValueError
        When the plugin refuses the settings (an unreadable TLS file, an invalid URL).
    """
    found = entry_points(group=ENTRY_POINT_GROUP, name=config.type)
    if not found:
        known = ", ".join(sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))) or "none"
        raise ExporterNotFoundError(
            f"exporter {name!r}: no plugin for type {config.type!r} in entry point group "
            f"{ENTRY_POINT_GROUP!r} (installed: {known})"
        )
    entry_point = next(iter(found))
    try:
        plugin = entry_point.load()
    except (ImportError, AttributeError) as exc:
        raise ExporterNotFoundError(
            f"exporter {name!r}: cannot load plugin {entry_point.value!r} for type {config.type!r}: {exc}"
        ) from exc
    if not (isinstance(plugin, type) and issubclass(plugin, Exporter)):
        raise ExporterNotFoundError(
            f"exporter {name!r}: plugin {entry_point.value!r} is not an otelai.exporter.base.Exporter"
        )
    # Plugins take (name, config); the base class's own signature has no config.
    factory = cast(Callable[[str, ExporterConfig], Exporter], plugin)
    return factory(name, config)
