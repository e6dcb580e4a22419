{{- define "tokenbroker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tokenbroker.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "tokenbroker.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "tokenbroker.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "tokenbroker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tokenbroker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tokenbroker.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "tokenbroker.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "tokenbroker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tokenbroker.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The broker configuration: values.config with the listeners and the
files of the mounted Secrets set by the chart. */}}
{{- define "tokenbroker.config" -}}
{{- $cfg := deepCopy .Values.config }}
{{- $_ := set $cfg "listen" (printf ":%d" (int .Values.ports.grpc)) }}
{{- $_ = set $cfg "http_listen" (printf ":%d" (int .Values.ports.http)) }}
{{- if .Values.sealing.existingSecret }}
{{- $_ = set $cfg "sealing" (dict "keys_file" (printf "/etc/tokenbroker/sealing/%s" .Values.sealing.key)) }}
{{- end }}
{{- if .Values.hmacKey.existingSecret }}
{{- $cache := default dict (get $cfg "cache") }}
{{- $_ = set $cache "hmac_key_file" (printf "/etc/tokenbroker/hmac/%s" .Values.hmacKey.key) }}
{{- $_ = set $cfg "cache" $cache }}
{{- end }}
{{- if .Values.redis.enabled }}
{{- $redis := dict "addrs" .Values.redis.addrs "master_name" .Values.redis.masterName "username" .Values.redis.username "tls" (dict "enabled" .Values.redis.tls) }}
{{- if .Values.redis.existingSecret }}
{{- $_ = set $redis "password_file" (printf "/etc/tokenbroker/redis/%s" .Values.redis.key) }}
{{- end }}
{{- $_ = set $cfg "shared" (dict "redis" $redis) }}
{{- end }}
{{- if .Values.tls.enabled }}
{{- $_ = set $cfg "tls" (dict "cert_file" "/etc/tokenbroker/tls/tls.crt" "key_file" "/etc/tokenbroker/tls/tls.key" "client_auth" .Values.tls.clientAuth) }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}
