{{/* The pod template shared by the Deployment, DaemonSet and StatefulSet. */}}
{{- define "otelai.podTemplate" -}}
metadata:
  annotations:
    # A config change rolls the pods.
    checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  labels:
    {{- include "otelai.selectorLabels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "otelai.serviceAccountName" . }}
  automountServiceAccountToken: {{ .Values.serviceAccount.automountServiceAccountToken }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- $runtimeClass := .Values.runtimeClassName }}
  {{- if and .Values.gpu.enabled (not $runtimeClass) }}
  {{- $runtimeClass = .Values.gpu.runtimeClassName }}
  {{- end }}
  {{- with $runtimeClass }}
  runtimeClassName: {{ . }}
  {{- end }}
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  containers:
    - name: otelai
      image: {{ include "otelai.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args:
        - serve
        - --config
        - /etc/otelai/config.yaml
        {{- range .Values.command.extraArgs }}
        - {{ . | quote }}
        {{- end }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      ports:
        {{- range $name, $port := .Values.ports }}
        {{- if $port.enabled }}
        - name: {{ $name }}
          containerPort: {{ $port.containerPort }}
          protocol: {{ $port.protocol | default "TCP" }}
          {{- if $port.hostPort }}
          hostPort: {{ $port.hostPort }}
          {{- end }}
        {{- end }}
        {{- end }}
      env:
        - name: POD_NAME
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        - name: POD_NAMESPACE
          valueFrom:
            fieldRef:
              fieldPath: metadata.namespace
        - name: NODE_NAME
          valueFrom:
            fieldRef:
              fieldPath: spec.nodeName
        - name: POD_IP
          valueFrom:
            fieldRef:
              fieldPath: status.podIP
        # Compiled engines and numba's kernels go to the model cache volume: the root
        # filesystem is read-only.
        - name: XDG_CACHE_HOME
          value: {{ .Values.modelCache.mountPath | quote }}
        - name: NUMBA_CACHE_DIR
          value: {{ printf "%s/numba" .Values.modelCache.mountPath | quote }}
        {{- with .Values.extraEnvs }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with .Values.extraEnvsFrom }}
      envFrom:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.livenessProbe }}
      livenessProbe:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.readinessProbe }}
      readinessProbe:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.startupProbe }}
      startupProbe:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.lifecycleHooks }}
      lifecycle:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      resources:
        {{- $resources := deepCopy (.Values.resources | default dict) }}
        {{- if .Values.gpu.enabled }}
        {{- $limits := get $resources "limits" | default dict }}
        {{- $_ := set $limits .Values.gpu.resourceName (.Values.gpu.count | int) }}
        {{- $_ := set $resources "limits" $limits }}
        {{- end }}
        {{- toYaml $resources | nindent 8 }}
      volumeMounts:
        - name: config
          mountPath: /etc/otelai
          readOnly: true
        - name: data
          mountPath: {{ .Values.persistence.mountPath }}
        - name: model-cache
          mountPath: {{ .Values.modelCache.mountPath }}
        - name: tmp
          mountPath: /tmp
        {{- with .Values.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    - name: config
      configMap:
        name: {{ include "otelai.configMapName" . }}
        items:
          - key: config.yaml
            path: config.yaml
    {{- if include "otelai.persistent" . }}
    {{- if eq .Values.mode "daemonset" }}
    - name: data
      hostPath:
        path: {{ .Values.persistence.hostPath }}
        type: DirectoryOrCreate
    {{- else }}
    - name: data
      persistentVolumeClaim:
        claimName: {{ include "otelai.claimName" . }}
    {{- end }}
    {{- else if not (and .Values.persistence.enabled (eq .Values.mode "statefulset")) }}
    - name: data
      emptyDir:
        {{- toYaml (.Values.persistence.emptyDir | default dict) | nindent 8 }}
    {{- end }}
    {{- if .Values.modelCache.existingClaim }}
    - name: model-cache
      persistentVolumeClaim:
        claimName: {{ .Values.modelCache.existingClaim }}
    {{- else }}
    - name: model-cache
      emptyDir:
        {{- toYaml (.Values.modelCache.emptyDir | default dict) | nindent 8 }}
    {{- end }}
    - name: tmp
      emptyDir:
        sizeLimit: 256Mi
    {{- with .Values.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- $nodeSelector := .Values.nodeSelector | default dict }}
  {{- if .Values.gpu.enabled }}
  {{- $nodeSelector = merge (deepCopy $nodeSelector) (.Values.gpu.nodeSelector | default dict) }}
  {{- end }}
  {{- with $nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- $tolerations := .Values.tolerations | default list }}
  {{- if .Values.gpu.enabled }}
  {{- $tolerations = concat $tolerations (.Values.gpu.tolerations | default list) }}
  {{- end }}
  {{- with $tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
