"""The Helm chart lints, renders and validates for every mode and every optional object.

Rendering and linting are Helm's own engine (``helm-python-sdk``); Kubernetes objects are
validated against the Kubernetes OpenAPI schemas (``kubernetes-validate``, strict: unknown fields
are errors) for the oldest Kubernetes the chart supports and the newest bundled; the two
Prometheus Operator kinds against the structural schemas in ``crd_schemas``.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from typing import Any

import helm_python as helm
import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from prometheus_client import CollectorRegistry

from otelai.config import Config, OtlpExporter, load_config
from otelai.telemetry.metrics import Metrics

from .chart_render import CHART, NAMESPACE, POD_ENV, RELEASE, Chart, Rendered, ci_values, lint, merge
from .collector_configs import otelai_values_files
from .crd_schemas import BY_KIND

KUBERNETES_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())
MONITORING = {
    "serviceMonitor": {"enabled": True},
    "prometheusRule": {"enabled": True},
    "grafanaDashboard": {"enabled": True},
}
ALERTS = {
    "OtelaiPipelineLatencyHigh",
    "OtelaiSLAViolations",
    "OtelaiBackendFallback",
    "OtelaiQueueFilling",
    "OtelaiExporterFailures",
}


def _scenarios() -> dict[str, dict[str, Any]]:
    """Defaults, each ci/ file, the collector-config/ topologies, and every mode with and
    without monitoring and autoscaling."""
    out: dict[str, dict[str, Any]] = {"default": {}}
    out.update({f"ci/{name}": values for name, values in ci_values().items()})
    topology = otelai_values_files()
    out["collector-config/otelai-values"] = topology["otelai-values"]
    out["collector-config/otelai-tail-sampling-values"] = merge(
        topology["otelai-values"], topology["otelai-tail-sampling-values"]
    )
    for mode, monitoring, hpa in itertools.product(
        ("deployment", "daemonset", "statefulset"), (False, True), (False, True)
    ):
        values: dict[str, Any] = {"mode": mode, "autoscaling": {"enabled": hpa}}
        if monitoring:
            values = merge(values, MONITORING)
        out[f"{mode}-monitoring={monitoring}-hpa={hpa}"] = values
    return out


SCENARIOS = _scenarios()


@pytest.fixture(scope="module")
def chart() -> Iterator[Chart]:
    loaded = Chart()
    yield loaded
    loaded.close()


@pytest.fixture(scope="module")
def rendered(chart: Chart) -> dict[str, Rendered]:
    return {name: chart.render(values) for name, values in SCENARIOS.items()}


def exposed_metric_names() -> set[str]:
    """Every series name otelai's registry can expose (counters with ``_total``, histograms' parts)."""
    registry = CollectorRegistry()
    Metrics(registry)
    names: set[str] = set()
    for family in registry.collect():
        if family.type == "counter":
            names |= {f"{family.name}_total", f"{family.name}_created"}
        elif family.type == "histogram":
            names |= {f"{family.name}_{part}" for part in ("bucket", "sum", "count", "created")}
        else:
            names.add(family.name)
    return names


def promql_metric_names(expr: str) -> set[str]:
    """otelai series names an expression reads (recording-rule names contain ':' and are skipped)."""
    return set(re.findall(r"(?<![\w:])(otelai_[a-z0-9_]+)(?![\w:])", expr))


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_chart_lints_strict(scenario: str) -> None:
    report = lint(SCENARIOS[scenario])
    assert report["errors"] == []
    # Severity 1 is informational ("icon is recommended"); warnings fail under --strict anyway.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_manifest_validates(rendered: dict[str, Rendered], scenario: str) -> None:
    docs = list(rendered[scenario])
    assert docs
    for doc in docs:
        assert doc["metadata"]["namespace"] == NAMESPACE, doc["kind"]
        if doc["kind"] in BY_KIND:
            jsonschema.validate(doc, BY_KIND[doc["kind"]])
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(part) for part in exc.path)
                pytest.fail(
                    f"{doc['kind']}/{doc['metadata']['name']} (Kubernetes {version}): {path}: {exc.message}"
                )


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_rendered_config_is_a_valid_service_config(rendered: dict[str, Rendered], scenario: str) -> None:
    config = load_config(f"{scenario}/config.yaml", text=rendered[scenario].config_text(), environ=POD_ENV)
    assert config.receivers.otlp.protocols.grpc is not None


def test_default_is_a_hardened_replicated_deployment(rendered: dict[str, Rendered]) -> None:
    out = rendered["default"]
    assert out.kinds() == [
        "ConfigMap",
        "Deployment",
        "PodDisruptionBudget",
        "Service",
        "Service",
        "ServiceAccount",
    ]
    deployment = out.one("Deployment")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    container = out.container()
    assert container["args"] == ["serve", "--config", "/etc/otelai/config.yaml"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "otlp": 4317,
        "otlp-http": 4318,
        "metrics": 9464,
    }
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["resources"]["requests"]["cpu"]
    assert container["resources"]["limits"]["memory"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["data"] == "/var/lib/otelai"
    assert mounts["model-cache"] == "/var/cache/otelai"
    assert mounts["tmp"] == "/tmp"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["data"] and "emptyDir" in volumes["model-cache"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["XDG_CACHE_HOME"] == "/var/cache/otelai"
    service = out.one("Service", RELEASE)
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
        "otlp": 4317,
        "otlp-http": 4318,
        "metrics": 9464,
    }
    headless = out.one("Service", f"{RELEASE}-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert out.one("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def test_config_keys_are_the_services_and_the_queue_is_on_the_volume(rendered: dict[str, Rendered]) -> None:
    config = load_config("config.yaml", text=rendered["default"].config_text(), environ=POD_ENV)
    assert config.exporters["otlp"].sending_queue.storage == "/var/lib/otelai/queue"
    assert config.exporters["otlp"].sending_queue.sizer == "items"
    batch = config.exporters["otlp"].sending_queue.batch
    assert batch is not None and (batch.flush_timeout, batch.min_size) == (pytest.approx(0.2), 8192)
    assert config.summaries.instance_id == "otelai-0"
    assert config.scoring.batching.latency_target == pytest.approx(0.01)
    assert config.telemetry.metrics is not None and config.telemetry.metrics.endpoint.endswith(":9464")


def test_config_change_rolls_the_pods(chart: Chart) -> None:
    def checksum(values: dict[str, Any]) -> str:
        annotations = chart.render(values).workload()["spec"]["template"]["metadata"]["annotations"]
        return str(annotations["checksum/config"])

    base = checksum({})
    assert checksum({"replicaCount": 5}) == base
    assert checksum({"config": {"selection": {"normal_sample_rate": 0.5}}}) != base


def test_daemonset_mode_keeps_traffic_on_the_node(rendered: dict[str, Rendered]) -> None:
    out = rendered["ci/daemonset-values"]
    daemonset = out.one("DaemonSet")
    assert "PodDisruptionBudget" not in out.kinds() and "HorizontalPodAutoscaler" not in out.kinds()
    assert out.one("Service", RELEASE)["spec"]["internalTrafficPolicy"] == "Local"
    volumes = {v["name"]: v for v in daemonset["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"]["hostPath"] == {"path": "/var/lib/otelai", "type": "DirectoryOrCreate"}
    otlp = next(p for p in out.container()["ports"] if p["name"] == "otlp")
    assert otlp["hostPort"] == 4317
    # Autoscaling and disruption budgets do not apply to one pod per node.
    assert "HorizontalPodAutoscaler" not in rendered["daemonset-monitoring=False-hpa=True"].kinds()


def test_statefulset_gets_a_queue_volume_per_replica(rendered: dict[str, Rendered]) -> None:
    out = rendered["ci/statefulset-values"]
    statefulset = out.one("StatefulSet")
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert claim["spec"]["storageClassName"] == "fast-ssd"
    assert statefulset["spec"]["serviceName"] == f"{RELEASE}-headless"
    assert "replicas" not in statefulset["spec"]  # the HPA owns it
    assert "data" not in {v["name"] for v in statefulset["spec"]["template"]["spec"]["volumes"]}
    hpa = out.one("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": RELEASE}


def test_single_replica_deployment_keeps_its_queue_on_a_claim(rendered: dict[str, Rendered]) -> None:
    out = rendered["ci/persistence-values"]
    claim = out.one("PersistentVolumeClaim")
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    deployment = out.one("Deployment")
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"persistence": {"enabled": True}}, "one queue for one pod"),
        (
            {"replicaCount": 1, "persistence": {"enabled": True}, "autoscaling": {"enabled": True}},
            "one queue",
        ),
        (
            {"config": {"receivers": {"otlp": {"protocols": {"grpc": {"endpoint": "0.0.0.0:5317"}}}}}},
            "does not listen on ports.otlp.containerPort",
        ),
        ({"config": {"telemetry": {"metrics": {"endpoint": "0.0.0.0:8888"}}}}, "ports.metrics"),
        ({"ports": {"otlp-http": {"enabled": False, "containerPort": 4318}}}, "ports.otlp-http is disabled"),
    ],
)
def test_values_that_would_break_the_release_are_refused(
    chart: Chart, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
        chart.render(values)


def test_gpu_variant(rendered: dict[str, Rendered]) -> None:
    out = rendered["ci/gpu-values"]
    pod = out.workload()["spec"]["template"]["spec"]
    container = out.container()
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["limits"]["memory"] == "8Gi"
    assert container["image"] == "otelai/otelai:0.1.0-gpu"
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["model-cache"]["persistentVolumeClaim"]["claimName"] == "otelai-engines"
    config = yaml.safe_load(out.config_text())
    assert config["scoring"]["backend"] == ["tensorrt", "cuda", "onnxruntime"]
    assert config["scoring"]["batching"]["latency_target"] == "10ms"  # the rest of scoring is kept
    assert load_config("gpu.yaml", text=out.config_text(), environ=POD_ENV).scoring.backend == [
        "tensorrt",
        "cuda",
        "onnxruntime",
    ]
    # The CPU variant leaves the backend to the service's default.
    assert "backend" not in yaml.safe_load(rendered["default"].config_text())["scoring"]


def test_gpu_daemonset_with_monitoring(rendered: dict[str, Rendered]) -> None:
    out = rendered["ci/edge-gpu-daemonset-values"]
    assert out.container()["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert out.one("DaemonSet")["spec"]["template"]["spec"]["runtimeClassName"] == "nvidia"
    rule = out.one("PrometheusRule")
    latency = next(
        r for g in rule["spec"]["groups"] for r in g["rules"] if r.get("alert") == "OtelaiPipelineLatencyHigh"
    )
    assert latency["expr"].endswith("> 0.005")


def test_hpa_scales_on_cpu_and_a_custom_metric(rendered: dict[str, Rendered]) -> None:
    out = rendered["ci/hpa-values"]
    assert "replicas" not in out.one("Deployment")["spec"]
    spec = out.one("HorizontalPodAutoscaler")["spec"]
    assert spec["scaleTargetRef"]["kind"] == "Deployment"
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 20)
    assert {m["resource"]["name"] for m in spec["metrics"] if m["type"] == "Resource"} == {"cpu", "memory"}
    pods = [m["pods"] for m in spec["metrics"] if m["type"] == "Pods"]
    assert [p["metric"]["name"] for p in pods] == [
        "otelai_queue_items",
        "otelai_pipeline_latency_seconds_p99",
    ]
    assert pods[0]["target"] == {"type": "AverageValue", "averageValue": "20000"}
    assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300


def test_monitoring_objects(rendered: dict[str, Rendered]) -> None:
    out = rendered["ci/monitoring-values"]
    monitor = out.one("ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    selector = monitor["spec"]["selector"]
    # Selects the Service, not the headless one (every pod would be scraped twice).
    services = [doc for doc in out if doc["kind"] == "Service"]
    selected = [
        s["metadata"]["name"]
        for s in services
        if all(s["metadata"]["labels"].get(k) == v for k, v in selector["matchLabels"].items())
        and all(e["key"] not in s["metadata"]["labels"] for e in selector["matchExpressions"])
    ]
    assert selected == [RELEASE]

    rule = out.one("PrometheusRule")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r}
    assert set(alerts) == ALERTS
    assert all(r["labels"]["severity"] in ("warning", "critical") for r in alerts.values())
    assert f'namespace="{NAMESPACE}", job="{RELEASE}"' in alerts["OtelaiQueueFilling"]["expr"]
    assert 'outcome="failed"' in alerts["OtelaiExporterFailures"]["expr"]

    dashboard_cm = out.one("ConfigMap", f"{RELEASE}-dashboard")
    assert dashboard_cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(dashboard_cm["data"]["otelai.json"])
    assert dashboard == json.loads((CHART / "dashboards" / "otelai.json").read_text())


def test_monitoring_objects_are_off_by_default(rendered: dict[str, Rendered]) -> None:
    kinds = rendered["default"].kinds()
    assert "ServiceMonitor" not in kinds and "PrometheusRule" not in kinds
    assert [doc["metadata"]["name"] for doc in rendered["default"] if doc["kind"] == "ConfigMap"] == [RELEASE]


def test_rules_and_dashboard_read_only_metrics_otelai_exports(rendered: dict[str, Rendered]) -> None:
    known = exposed_metric_names()
    rule = rendered["ci/monitoring-values"].one("PrometheusRule")
    rule_exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    dashboard = json.loads((CHART / "dashboards" / "otelai.json").read_text())
    dashboard_exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    dashboard_exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    used = set().union(*(promql_metric_names(e) for e in rule_exprs + dashboard_exprs))
    assert used - known == set()
    # Every metric named in the issue's alert list is used.
    assert {
        "otelai_pipeline_latency_seconds_bucket",
        "otelai_backend_fallbacks_total",
        "otelai_queue_size",
        "otelai_queue_capacity",
        "otelai_exporter_items_total",
        "otelai_sla_violations_total",
    } <= used


def test_dashboard_panels_are_laid_out_and_use_the_datasource_variable() -> None:
    dashboard = json.loads((CHART / "dashboards" / "otelai.json").read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"
            assert 'namespace="$namespace"' in target["expr"], panel["title"]


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"mode": "sidecar"}, "/mode"),
        ({"replicas": 3}, "replicas"),
        ({"config": {"exporter": {"otlp": {}}}}, "exporter"),
        ({"gpu": {"enabled": True, "backends": []}}, "/gpu/backends"),
        ({"ports": {"metrics": {"enabled": True, "containerPort": 70000}}}, "/ports/metrics/containerPort"),
    ],
)
def test_values_schema_rejects_mistakes(chart: Chart, values: dict[str, Any], where: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=re.escape(where)):
        chart.render(values)


def test_values_schema_lists_the_services_top_level_config_keys() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["properties"]["config"]["propertyNames"]["enum"] == sorted(Config.model_fields), (
        "helm/otelai/values.schema.json: config.propertyNames must list otelai.config.Config's fields"
    )


def test_every_values_key_is_in_the_schema() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(values) <= set(schema["properties"])
    # The defaults themselves satisfy the schema.
    jsonschema.validate(values, schema)


def test_tail_sampling_topology_forwards_everything_tagged(rendered: dict[str, Rendered]) -> None:
    text = rendered["collector-config/otelai-tail-sampling-values"].config_text()
    config = load_config("otelai-tail-sampling.yaml", text=text, environ=POD_ENV)
    assert config.selection.normal_sample_rate == 1.0
    exporter = config.exporters["otlp"]
    assert isinstance(exporter, OtlpExporter) and exporter.endpoint == "otel-gateway:4317"


def test_notes_tell_where_to_send_data(rendered: dict[str, Rendered]) -> None:
    notes = rendered["ci/monitoring-values"].notes
    assert f"{RELEASE}.{NAMESPACE}.svc:4317" in notes
    assert "routing_key: traceID" in notes
    assert "PrometheusRule" in notes
    assert "nvidia.com/gpu" in rendered["ci/gpu-values"].notes


def test_null_replaces_the_default_exporter(chart: Chart) -> None:
    values = {"config": {"exporters": {"otlp": None, "otlphttp": {"endpoint": "https://gateway:4318"}}}}
    config = load_config("replace.yaml", text=chart.render(values).config_text(), environ=POD_ENV)
    assert list(config.exporters) == ["otlphttp"]
