{{/* Names, labels and the few derived values every template shares. */}}

{{- define "otelai.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "otelai.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "otelai.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "otelai.selectorLabels" -}}
app.kubernetes.io/name: {{ include "otelai.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "otelai.labels" -}}
helm.sh/chart: {{ include "otelai.chart" . }}
{{ include "otelai.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: {{ .Values.mode }}
{{- with .Values.additionalLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "otelai.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "otelai.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "otelai.configMapName" -}}
{{- if .Values.configMap.create }}
{{- include "otelai.fullname" . }}
{{- else }}
{{- required "configMap.existingName is required when configMap.create is false" .Values.configMap.existingName }}
{{- end }}
{{- end }}

{{/*
The service configuration as it is written to the ConfigMap: .Values.config, with the GPU
backend order when gpu.enabled.
*/}}
{{- define "otelai.config" -}}
{{- $config := deepCopy .Values.config }}
{{- if .Values.gpu.enabled }}
{{- $scoring := get $config "scoring" | default dict }}
{{- $_ := set $scoring "backend" .Values.gpu.backends }}
{{- $_ := set $config "scoring" $scoring }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{- define "otelai.image" -}}
{{- $repository := .Values.image.repository }}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- $digest := .Values.image.digest }}
{{- if .Values.gpu.enabled }}
{{- $repository = default .Values.image.repository .Values.gpu.image.repository }}
{{- $tag = default (printf "%s-gpu" .Chart.AppVersion) .Values.gpu.image.tag }}
{{- $digest = .Values.gpu.image.digest }}
{{- end }}
{{- if $digest }}
{{- printf "%s@%s" $repository $digest }}
{{- else }}
{{- printf "%s:%s" $repository $tag }}
{{- end }}
{{- end }}

{{/* Whether the queue volume is a claim or a host directory rather than an emptyDir. */}}
{{- define "otelai.persistent" -}}
{{- if and .Values.persistence.enabled (ne .Values.mode "statefulset") }}true{{ end }}
{{- end }}

{{- define "otelai.claimName" -}}
{{- default (printf "%s-data" (include "otelai.fullname" .)) .Values.persistence.existingClaim }}
{{- end }}

{{/* PromQL label matchers for this release's series (the default rules and the HPA docs). */}}
{{- define "otelai.ruleSelector" -}}
{{- if .Values.prometheusRule.defaultRules.selector }}
{{- .Values.prometheusRule.defaultRules.selector }}
{{- else }}
{{- printf "namespace=%q, job=%q" .Release.Namespace (include "otelai.fullname" .) }}
{{- end }}
{{- end }}

{{/*
Refuse values that would render a broken release: a mode the chart does not know, the config
listening on other ports than the container exposes, or one persistent queue shared by
several pods (the queue directory is locked by its process; the second pod could not start).
*/}}
{{- define "otelai.validate" -}}
{{- if not (has .Values.mode (list "deployment" "daemonset" "statefulset")) }}
{{- fail (printf "mode must be deployment, daemonset or statefulset, got %q" .Values.mode) }}
{{- end }}
{{- $checks := list }}
{{- $receivers := .Values.config.receivers | default dict }}
{{- $otlp := $receivers.otlp | default dict }}
{{- $protocols := $otlp.protocols | default dict }}
{{- with $protocols.grpc }}{{ $checks = append $checks (list "receivers.otlp.protocols.grpc.endpoint" (.endpoint | default "0.0.0.0:4317") "otlp") }}{{ end }}
{{- with $protocols.http }}{{ $checks = append $checks (list "receivers.otlp.protocols.http.endpoint" (.endpoint | default "0.0.0.0:4318") "otlp-http") }}{{ end }}
{{- $telemetry := .Values.config.telemetry | default dict }}
{{- with $telemetry.metrics }}{{ $checks = append $checks (list "telemetry.metrics.endpoint" (.endpoint | default "0.0.0.0:9464") "metrics") }}{{ end }}
{{- range $checks }}
{{- $key := index . 0 }}
{{- $endpoint := index . 1 }}
{{- $port := index $.Values.ports (index . 2) }}
{{- if not $port.enabled }}
{{- fail (printf "config.%s is set but ports.%s is disabled" $key (index . 2)) }}
{{- end }}
{{- if not (hasSuffix (printf ":%v" $port.containerPort) $endpoint) }}
{{- fail (printf "config.%s (%s) does not listen on ports.%s.containerPort (%v)" $key $endpoint (index . 2) $port.containerPort) }}
{{- end }}
{{- end }}
{{- if and .Values.persistence.enabled (eq .Values.mode "deployment") }}
{{- if or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1) }}
{{- fail "persistence with mode deployment holds one queue for one pod: set replicaCount 1 without autoscaling, or use mode statefulset (one volume per replica)" }}
{{- end }}
{{- end }}
{{- end }}
