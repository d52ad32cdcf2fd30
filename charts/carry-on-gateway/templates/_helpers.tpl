{{/* Names, truncated to 63 characters: the DNS label limit of Kubernetes names. */}}
{{- define "carryon-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "carryon-gateway.fullname" -}}
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

{{- define "carryon-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "carryon-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "carryon-gateway.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "carryon-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "carryon-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "carryon-gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding `admin-key` (and optionally `api-keys`): the user's, or the chart's. */}}
{{- define "carryon-gateway.secretName" -}}
{{- default (include "carryon-gateway.fullname" .) .Values.auth.existingSecret }}
{{- end }}

{{- define "carryon-gateway.claimName" -}}
{{- default (include "carryon-gateway.fullname" .) .Values.persistence.existingClaim }}
{{- end }}

{{/* The Dockerfile's flavours share a version: <appVersion> for CPU, <appVersion>-cuda for GPU. */}}
{{- define "carryon-gateway.image" -}}
{{- $tag := .Values.image.tag | default (printf "%s%s" .Chart.AppVersion (ternary "-cuda" "" .Values.gpu.enabled)) }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}

{{/*
A value as a quoted environment string. Helm reads numbers from values files as float64, which
`quote` alone prints as 1.048576e+06 from a million up; integers go through int64 first. null is "".
*/}}
{{- define "carryon-gateway.envValue" -}}
{{- if kindIs "invalid" . }}
{{- quote "" }}
{{- else if kindIs "float64" . }}
{{- int64 . | toString | quote }}
{{- else }}
{{- toString . | quote }}
{{- end }}
{{- end }}

{{/*
The grace period the kubelet allows between SIGTERM and SIGKILL. On SIGTERM (after the preStop
pause) the gateway reports not-ready, refuses new work and lets in-flight generations finish; each
ends by config.drainTimeoutMs at the latest (finish_reason "length"), which makes that the drain
deadline. A grace period below pause + drain + margin would SIGKILL streams mid-response.
*/}}
{{- define "carryon-gateway.terminationGracePeriodSeconds" -}}
{{- $drain := divf .Values.config.drainTimeoutMs 1000 | ceil | int }}
{{- $min := add .Values.shutdown.preStopSleepSeconds $drain .Values.shutdown.marginSeconds | int }}
{{- $grace := $min }}
{{- if not (kindIs "invalid" .Values.shutdown.terminationGracePeriodSeconds) }}
{{- $grace = .Values.shutdown.terminationGracePeriodSeconds | int }}
{{- end }}
{{- if lt $grace $min }}
{{- fail (printf "shutdown.terminationGracePeriodSeconds (%d) must be at least shutdown.preStopSleepSeconds + ceil(config.drainTimeoutMs / 1000) + shutdown.marginSeconds = %d: in-flight generations drain for up to config.drainTimeoutMs after SIGTERM" $grace $min) }}
{{- end }}
{{- $grace }}
{{- end }}

{{/* Combinations the schema cannot express; rendered (to nothing) by the Deployment. */}}
{{- define "carryon-gateway.validate" -}}
{{- $rwo := and .Values.persistence.enabled (eq .Values.persistence.accessMode "ReadWriteOnce" "ReadWriteOncePod") }}
{{- $scaled := or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled }}
{{- if and $scaled (not (and .Values.database.existingSecret .Values.config.objectStoreUrl)) }}
{{- fail "replicaCount > 1 and autoscaling need the shared stores: database.existingSecret (PostgreSQL) and config.objectStoreUrl (the bucket); without them each pod would keep its own keys, carry-ons and shards" }}
{{- end }}
{{- if and $scaled $rwo }}
{{- fail "replicaCount > 1 and autoscaling need a /data every pod can mount: persistence.enabled false (a per-pod emptyDir, a cache once the stores are shared) or accessMode ReadWriteMany; a ReadWriteOnce volume mounts in one pod" }}
{{- end }}
{{- if and .Values.trainingWorker.enabled (ne .Values.config.trainingWorker "external") }}
{{- fail "trainingWorker.enabled runs training jobs in their own pods: set config.trainingWorker to external, so gateway pods only queue them" }}
{{- end }}
{{- if and .Values.trainingWorker.enabled (not (and .Values.database.existingSecret .Values.config.objectStoreUrl)) }}
{{- fail "trainingWorker.enabled needs the shared stores: database.existingSecret (the job queue) and config.objectStoreUrl (shards in, carry-ons out)" }}
{{- end }}
{{- if and .Values.gpu.enabled (eq .Values.config.executionProvider "cpu") }}
{{- fail "gpu.enabled requests a GPU, but config.executionProvider is cpu: set it to cuda" }}
{{- end }}
{{- if and .Values.auth.existingSecret (or .Values.auth.adminKey .Values.auth.apiKeys) }}
{{- fail "auth.existingSecret is set: put admin-key and api-keys in that Secret, not in auth.adminKey / auth.apiKeys" }}
{{- end }}
{{- $pdb := .Values.podDisruptionBudget }}
{{- if and $pdb.enabled (eq (kindIs "invalid" $pdb.minAvailable) (kindIs "invalid" $pdb.maxUnavailable)) }}
{{- fail "podDisruptionBudget: set exactly one of minAvailable and maxUnavailable" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas is above autoscaling.maxReplicas" }}
{{- end }}
{{- end }}
