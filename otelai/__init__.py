"""otelai: an OpenTelemetry Collector companion that scores telemetry and forwards what matters."""

__version__ = "0.1.0"
