"""The Collector configurations of collector-config/: real components, sound pipelines, and
values for the OpenTelemetry Collector Helm chart that carry exactly those configurations.

The shipped otelcol-contrib build validates what it can in tests/integration/test_deploy_collector.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from .collector_configs import (
    CONTRIB,
    KNOWN_KEYS,
    LOADBALANCING_RESOLVERS,
    OFFICIAL_CHART_KEYS,
    TAIL_SAMPLING_POLICIES,
    VALUES_CONFIG,
    chart_config,
    component_type,
    components,
    dangling_references,
    helm_merge,
    reduce_for_build,
    standalone_configs,
    values_files,
)

CONFIGS = standalone_configs()
VALUES = values_files()


def _all_configs() -> dict[str, dict[str, Any]]:
    out = dict(CONFIGS)
    out.update({f"helm/{name}": chart_config(values) for name, values in VALUES.items()})
    return out


ALL = _all_configs()


def test_the_topologies_are_all_there() -> None:
    assert set(CONFIGS) == {"agent", "agent-loadbalancing", "gateway", "gateway-tail-sampling"}
    assert set(VALUES) == set(VALUES_CONFIG)


@pytest.mark.parametrize("name", sorted(ALL))
def test_components_are_real_contrib_components(name: str) -> None:
    for section, component, _ in components(ALL[name]):
        assert component_type(component) in CONTRIB[section], f"{name}: {section}.{component}"


@pytest.mark.parametrize("name", sorted(ALL))
def test_pipelines_reference_defined_components(name: str) -> None:
    assert dangling_references(ALL[name]) == []


@pytest.mark.parametrize("name", sorted(ALL))
def test_settings_use_the_components_keys(name: str) -> None:
    for section, component, settings in components(ALL[name]):
        known = KNOWN_KEYS.get((section, component_type(component)))
        if known is not None:
            assert set(settings or {}) <= known, f"{name}: {section}.{component}: {set(settings) - known}"


def test_otelai_hop_is_wired_agent_to_otelai_to_gateway() -> None:
    agent = CONFIGS["agent"]["exporters"]["otlp/otelai"]
    assert agent["endpoint"] == "otelai.observability.svc.cluster.local:4317"
    for gateway in ("gateway", "gateway-tail-sampling"):
        grpc = CONFIGS[gateway]["receivers"]["otlp"]["protocols"]["grpc"]
        assert grpc["endpoint"].endswith(":4317")  # otelai's default exporter: otel-gateway:4317


def test_loadbalancing_routes_traces_by_trace_id_to_the_headless_service() -> None:
    config = CONFIGS["agent-loadbalancing"]
    exporter = config["exporters"]["loadbalancing/otelai"]
    assert exporter["routing_key"] == "traceID"
    assert set(exporter["resolver"]) <= set(LOADBALANCING_RESOLVERS)
    for kind, settings in exporter["resolver"].items():
        assert set(settings) <= LOADBALANCING_RESOLVERS[kind]
    assert exporter["resolver"]["dns"]["hostname"].startswith("otelai-headless.")
    assert "endpoint" not in exporter["protocol"]["otlp"]  # the resolver sets it
    pipelines = config["service"]["pipelines"]
    assert pipelines["traces"]["exporters"] == ["loadbalancing/otelai"]
    # traceID routing is for traces and logs only: metrics go to the Service.
    assert pipelines["metrics"]["exporters"] == ["otlp/otelai"]


def test_tail_sampling_keeps_what_otelai_tagged() -> None:
    config = CONFIGS["gateway-tail-sampling"]
    policies = config["processors"]["tail_sampling"]["policies"]
    assert {p["type"] for p in policies} <= TAIL_SAMPLING_POLICIES
    for policy in policies:
        assert set(policy) <= {"name", "type", policy["type"]}
    otelai = next(p for p in policies if p["type"] == "string_attribute")
    assert otelai["string_attribute"] == {"key": "otelai.anomaly.severity", "values": ["anomaly", "critical"]}
    pipelines = config["service"]["pipelines"]
    assert "tail_sampling" in pipelines["traces"]["processors"]
    assert "probabilistic_sampler/normal-logs" in pipelines["logs/normal-sampled"]["processors"]
    assert "probabilistic_sampler/normal-logs" not in pipelines["logs/anomalous"]["processors"]


@pytest.mark.parametrize("name", sorted(VALUES))
def test_chart_values_carry_the_standalone_configuration(name: str) -> None:
    values = VALUES[name]
    assert set(values) <= OFFICIAL_CHART_KEYS
    assert values["mode"] in ("daemonset", "deployment", "statefulset")
    assert values["image"]["repository"] and values["command"]["name"] == "otelcol-contrib"
    rendered = chart_config(values)
    standalone = CONFIGS[VALUES_CONFIG[name]]
    assert rendered == standalone, f"{name}: config differs from collector-config/{VALUES_CONFIG[name]}.yaml"
    # The chart's default ports the configuration no longer serves are closed.
    assert all(
        not values["ports"][p]["enabled"]
        for p in ("jaeger-compact", "jaeger-thrift", "jaeger-grpc", "zipkin")
    )


def test_helm_merge_deletes_with_null_and_replaces_lists() -> None:
    merged = helm_merge({"a": {"b": 1, "c": [1, 2]}, "d": 1}, {"a": {"b": None, "c": [3]}, "e": 2})
    assert merged == {"a": {"c": [3]}, "d": 1, "e": 2}


def test_reduction_keeps_what_the_build_has_in_one_logs_pipeline() -> None:
    available = {
        "receivers": {"filelog"},
        "processors": {"batch", "memory_limiter"},
        "exporters": {"otlphttp"},
    }
    reduced = reduce_for_build(CONFIGS["agent-loadbalancing"], available)
    assert set(reduced["processors"]) == {"batch", "memory_limiter"}
    assert reduced["processors"]["batch"] == CONFIGS["agent-loadbalancing"]["processors"]["batch"]
    exporters = reduced["exporters"]
    assert set(exporters) == {"otlphttp/loadbalancing-otelai-as-otlphttp", "otlphttp/otlp-otelai-as-otlphttp"}
    template = CONFIGS["agent-loadbalancing"]["exporters"]["loadbalancing/otelai"]["protocol"]["otlp"]
    assert (
        exporters["otlphttp/loadbalancing-otelai-as-otlphttp"]["sending_queue"] == template["sending_queue"]
    )
    (pipeline,) = reduced["service"]["pipelines"].values()
    assert pipeline["processors"] == ["memory_limiter", "batch"]
    assert dangling_references(reduced) == []
