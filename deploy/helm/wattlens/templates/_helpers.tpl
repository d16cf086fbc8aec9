{{/* Names and labels, after the usual Helm conventions. */}}
{{- define "wattlens.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "wattlens.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "wattlens.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wattlens.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "wattlens.labels" -}}
{{ include "wattlens.selectorLabels" . }}
app.kubernetes.io/component: exporter
app.kubernetes.io/part-of: wattlens
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Labels the Prometheus Operator selects ServiceMonitors and PrometheusRules by. */}}
{{- define "wattlens.monitorLabels" -}}
{{- $labels := deepCopy .extra -}}
{{- with .root.Values.kubePrometheusStack.release -}}
{{- $_ := set $labels "release" . -}}
{{- end -}}
{{- with $labels -}}
{{- toYaml . -}}
{{- end -}}
{{- end -}}

{{- define "wattlens.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "wattlens.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name: set the name of an existing ServiceAccount, or serviceAccount.create: true" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "wattlens.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* wattlens.yaml: the user's `config` plus the settings the chart owns (mount paths, port, features). */}}
{{- define "wattlens.config" -}}
{{- $owned := dict "listen" (printf ":%d" (int .Values.port)) "sys_path" "/host/sys" "proc_path" "/proc" "cgroup_root" "/host/sys/fs/cgroup" "kubelet_log_path" "/host/var/log" -}}
{{- if .Values.apiWatch.enabled -}}
{{- $_ := set $owned "kubernetes_api" true -}}
{{- with .Values.apiWatch.podLabels -}}
{{- $_ := set $owned "pod_labels" . -}}
{{- end -}}
{{- end -}}
{{- if .Values.webConfig.secretName -}}
{{- $_ := set $owned "web_config_file" "/etc/wattlens/web/web-config.yml" -}}
{{- end -}}
{{- if .Values.redfish.secretName -}}
{{- $_ := set $owned "redfish" (dict "username_file" "/etc/wattlens/redfish/username" "password_file" "/etc/wattlens/redfish/password") -}}
{{- end -}}
{{- if .Values.carbon.secretName -}}
{{- if eq (dig "carbon" "provider" "none" .Values.config) "watttime" -}}
{{- $_ := set $owned "carbon" (dict "password_file" "/etc/wattlens/carbon/password") -}}
{{- else -}}
{{- $_ := set $owned "carbon" (dict "token_file" "/etc/wattlens/carbon/token") -}}
{{- end -}}
{{- end -}}
{{- if .Values.healthPort -}}
{{- $_ := set $owned "health_listen" (printf ":%d" (int .Values.healthPort)) -}}
{{- end -}}
{{- toYaml (merge $owned (deepCopy .Values.config)) -}}
{{- end -}}

{{/* The container's command-line arguments and probes: one place to change them. */}}
{{- define "wattlens.args" -}}
{{- toJson (concat (list "serve") .Values.extraArgs) -}}
{{- end -}}

{{- define "wattlens.probes" -}}
readinessProbe:
  httpGet:
    path: {{ .Values.probes.readiness.path }}
    port: {{ .Values.probes.port }}
    scheme: {{ .Values.probes.scheme }}
  {{- toYaml (omit .Values.probes.readiness "path") | nindent 2 }}
livenessProbe:
  httpGet:
    path: {{ .Values.probes.liveness.path }}
    port: {{ .Values.probes.port }}
    scheme: {{ .Values.probes.scheme }}
  {{- toYaml (omit .Values.probes.liveness "path") | nindent 2 }}
{{- end -}}
