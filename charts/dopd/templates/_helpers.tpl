{{/*
Names, labels and the checks every template shares.
*/}}

{{/* The chart name, or nameOverride: the app.kubernetes.io/name label. */}}
{{- define "dopd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The full name of the objects: fullnameOverride, else the release name when it already contains the
chart name, else "<release>-<chart>". Kubernetes names are at most 63 characters.
*/}}
{{- define "dopd.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "dopd.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "dopd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The labels that select the operator pods; never change them in an upgrade (selectors are immutable). */}}
{{- define "dopd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dopd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* Labels of every object the chart creates. */}}
{{- define "dopd.labels" -}}
helm.sh/chart: {{ include "dopd.chart" . }}
{{ include "dopd.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: dopd
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels of the CRD: those of crds/ (app.kubernetes.io/name and part-of: dopd) and the release's. */}}
{{- define "dopd.crdLabels" -}}
app.kubernetes.io/name: dopd
app.kubernetes.io/part-of: dopd
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ include "dopd.chart" . }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "dopd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "dopd.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "dopd.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Where the optional Prometheus credentials are mounted in the operator container. */}}
{{- define "dopd.tokenDir" -}}/var/run/secrets/dopd/prometheus-token{{- end -}}
{{- define "dopd.caDir" -}}/etc/dopd/prometheus-ca{{- end -}}

{{/*
The operator's environment (docs/operations.md, "Configuration"): the only way the chart configures
the process. Names the chart sets may not be repeated in extraEnv.
*/}}
{{- define "dopd.env" -}}
- name: DOPD_PROMETHEUS_URL
  value: {{ .Values.prometheus.url | quote }}
- name: DOPD_PROMETHEUS_TIMEOUT_SECONDS
  value: {{ .Values.prometheus.timeoutSeconds | quote }}
{{- with .Values.prometheus.bearerTokenSecret.name }}
- name: DOPD_PROMETHEUS_BEARER_TOKEN_FILE
  value: {{ printf "%s/%s" (include "dopd.tokenDir" $) $.Values.prometheus.bearerTokenSecret.key | quote }}
{{- end }}
{{- with .Values.prometheus.caConfigMap.name }}
- name: DOPD_PROMETHEUS_CA_FILE
  value: {{ printf "%s/%s" (include "dopd.caDir" $) $.Values.prometheus.caConfigMap.key | quote }}
{{- end }}
{{- with .Values.watchNamespaces }}
- name: DOPD_NAMESPACES
  value: {{ join "," . | quote }}
{{- end }}
- name: DOPD_METRICS_PORT
  value: {{ .Values.metricsPort | quote }}
- name: DOPD_HEALTH_PORT
  value: {{ .Values.healthPort | quote }}
- name: DOPD_BIND_ADDRESS
  value: "0.0.0.0"
{{- if not .Values.peering.standalone }}
- name: DOPD_PEERING
  value: {{ .Values.peering.name | quote }}
{{- end }}
- name: DOPD_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
{{- end -}}

{{/*
Refuse values that cannot work together, naming the values and the fix. Included from the Deployment;
Helm renders every template even with `--show-only`, so rendering any one file still checks them.
*/}}
{{- define "dopd.validate" -}}
{{- if not .Values.prometheus.url -}}
{{- fail "prometheus.url is required: the operator reads the engines' metrics from Prometheus. Set it, for example --set prometheus.url=http://prometheus-operated.monitoring.svc:9090" -}}
{{- end -}}
{{- if and .Values.prometheus.caConfigMap.name (hasPrefix "http://" .Values.prometheus.url) -}}
{{- fail (printf "prometheus.caConfigMap.name is set but prometheus.url (%s) is http://: a CA bundle only applies to https. Use an https:// URL or unset prometheus.caConfigMap.name" .Values.prometheus.url) -}}
{{- end -}}
{{- if and .Values.peering.standalone (gt (int .Values.replicaCount) 1) -}}
{{- fail (printf "peering.standalone=true with replicaCount=%d: without peering every replica acts, and they would fight over the same Deployments. Set replicaCount=1 or peering.standalone=false" (int .Values.replicaCount)) -}}
{{- end -}}
{{- if eq (int .Values.metricsPort) (int .Values.healthPort) -}}
{{- fail (printf "metricsPort and healthPort are both %d: the two servers need different ports" (int .Values.metricsPort)) -}}
{{- end -}}
{{- if and .Values.serviceMonitor.enabled (not .Values.metricsService.enabled) -}}
{{- fail "serviceMonitor.enabled=true needs metricsService.enabled=true: the ServiceMonitor scrapes through the metrics Service" -}}
{{- end -}}
{{- if and (not .Values.serviceAccount.create) (not .Values.serviceAccount.name) -}}
{{- fail "serviceAccount.create=false needs serviceAccount.name: the existing ServiceAccount the operator runs as" -}}
{{- end -}}
{{- $chartEnv := list "DOPD_PROMETHEUS_URL" "DOPD_PROMETHEUS_TIMEOUT_SECONDS" "DOPD_PROMETHEUS_BEARER_TOKEN_FILE" "DOPD_PROMETHEUS_CA_FILE" "DOPD_NAMESPACES" "DOPD_METRICS_PORT" "DOPD_HEALTH_PORT" "DOPD_BIND_ADDRESS" "DOPD_PEERING" "DOPD_STANDALONE" "DOPD_LOG_FORMAT" -}}
{{- range .Values.extraEnv -}}
{{- if has .name $chartEnv -}}
{{- fail (printf "extraEnv sets %s, which the chart sets from its values: use the value documented in values.yaml instead" .name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
