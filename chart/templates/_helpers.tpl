{{/* Names, labels and the rules values.schema.json cannot express. */}}

{{- define "streamspace.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "streamspace.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains (include "streamspace.name" .) .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "streamspace.name" .) | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels every object carries; pass (dict "ctx" $ "component" "...") */}}
{{- define "streamspace.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "streamspace.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: streamspace
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "streamspace.selectorLabels" -}}
app.kubernetes.io/name: {{ include "streamspace.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "streamspace.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Object names. */}}
{{- define "streamspace.cp.name" -}}{{ include "streamspace.fullname" . }}-control-plane{{- end -}}
{{- define "streamspace.agent.name" -}}{{ include "streamspace.fullname" . }}-k8s-agent{{- end -}}
{{- define "streamspace.apiService" -}}{{ include "streamspace.fullname" . }}-api{{- end -}}
{{- define "streamspace.agentService" -}}{{ include "streamspace.fullname" . }}-agent-endpoint{{- end -}}
{{- define "streamspace.certsJob" -}}{{ include "streamspace.fullname" . }}-certs{{- end -}}
{{- define "streamspace.caSecret" -}}{{ include "streamspace.fullname" . }}-ca{{- end -}}
{{- define "streamspace.serverSecret" -}}{{ default (printf "%s-server-tls" (include "streamspace.fullname" .)) .Values.tls.serverSecret }}{{- end -}}
{{- define "streamspace.agentSecret" -}}{{ default (printf "%s-agent-tls" (include "streamspace.fullname" .)) .Values.tls.agentSecret }}{{- end -}}
{{- define "streamspace.tokensSecret" -}}{{ default (printf "%s-tokens" (include "streamspace.fullname" .)) .Values.auth.existingSecret }}{{- end -}}

{{- define "streamspace.mirrorNamespace" -}}{{ default .Release.Namespace .Values.controller.mirrorNamespace }}{{- end -}}
{{- define "streamspace.sessionNamespace" -}}{{ default .Release.Namespace .Values.k8sAgent.config.namespace }}{{- end -}}

{{/* The agent endpoint agents dial: the value, or this release's agent service. */}}
{{- define "streamspace.controlPlaneUrl" -}}
{{- if .Values.k8sAgent.config.controlPlaneUrl -}}
{{- .Values.k8sAgent.config.controlPlaneUrl -}}
{{- else -}}
{{- printf "https://%s.%s.svc:%d" (include "streamspace.agentService" .) .Release.Namespace (int .Values.controlPlane.service.agent.port) -}}
{{- end -}}
{{- end -}}

{{/* DNS names of the server certificate: both services, short and long, plus localhost for port-forward. */}}
{{- define "streamspace.serverDnsNames" -}}
{{- $ns := .Release.Namespace -}}
{{- $names := list "localhost" -}}
{{- range $svc := list (include "streamspace.apiService" .) (include "streamspace.agentService" .) -}}
{{- $names = concat $names (list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns)) -}}
{{- end -}}
{{- concat $names .Values.tls.dnsNames | uniq | toJson -}}
{{- end -}}

{{/* The hook Job makes the certificates unless cert-manager does or the user names Secrets. */}}
{{- define "streamspace.certsJob.enabled" -}}
{{- if and (not .Values.certManager.enabled) (or (and .Values.controlPlane.enabled (not .Values.tls.serverSecret)) (and .Values.k8sAgent.enabled (not .Values.tls.agentSecret))) -}}true{{- end -}}
{{- end -}}

{{/* Rules across keys; each failure names the keys to change. */}}
{{- define "streamspace.validate" -}}
{{- $cp := .Values.controlPlane -}}
{{- $agent := .Values.k8sAgent -}}
{{- if and $cp.enabled (eq $cp.database.type "sqlite") (gt (int $cp.replicaCount) 1) -}}
{{- fail (printf "controlPlane.replicaCount=%d needs controlPlane.database.type=postgres: the embedded SQLite file serves one replica only" (int $cp.replicaCount)) -}}
{{- end -}}
{{- if and $cp.enabled (eq $cp.database.type "postgres") (not $cp.database.postgres.existingSecret) -}}
{{- fail "controlPlane.database.postgres.existingSecret is required with controlPlane.database.type=postgres (a Secret holding the PostgreSQL URL)" -}}
{{- end -}}
{{- if and $agent.enabled (gt (int $agent.replicaCount) 1) (not $agent.ha.enabled) -}}
{{- fail (printf "k8sAgent.replicaCount=%d needs k8sAgent.ha.enabled=true: replicas sharing agent id %q without leader election would take the control-plane connection from each other" (int $agent.replicaCount) $agent.config.agentId) -}}
{{- end -}}
{{- if and $agent.enabled (not $cp.enabled) (not $agent.config.controlPlaneUrl) -}}
{{- fail "k8sAgent.config.controlPlaneUrl is required when controlPlane.enabled=false (the agent dials a control plane outside this release)" -}}
{{- end -}}
{{- if and $agent.enabled (not $cp.enabled) (not $.Values.tls.agentSecret) (not (and $.Values.certManager.enabled $.Values.certManager.issuerRef.name)) -}}
{{- fail "tls.agentSecret is required when controlPlane.enabled=false: name a Secret holding a client certificate issued by the remote control plane's CA (or set certManager.enabled with certManager.issuerRef naming that CA's issuer)" -}}
{{- end -}}
{{- if and $agent.enabled $cp.enabled $.Values.tls.serverSecret (not $.Values.tls.agentSecret) -}}
{{- fail "tls.agentSecret is required with tls.serverSecret: the agent's client certificate must come from the CA of the named server certificate" -}}
{{- end -}}
{{- if and .Values.certManager.enabled (or .Values.tls.serverSecret .Values.tls.agentSecret) -}}
{{- fail "certManager.enabled=true issues the certificates itself: leave tls.serverSecret and tls.agentSecret empty" -}}
{{- end -}}
{{- $mon := .Values.monitoring -}}
{{- if and $mon.serviceMonitor.enabled (not (and $cp.enabled $cp.metrics.enabled)) -}}
{{- fail "monitoring.serviceMonitor.enabled=true needs controlPlane.enabled=true and controlPlane.metrics.enabled=true: the ServiceMonitor scrapes the control plane's metrics Service, which exists only then" -}}
{{- end -}}
{{- if and $mon.podMonitor.enabled (not (and $agent.enabled $agent.metrics.enabled)) -}}
{{- fail "monitoring.podMonitor.enabled=true needs k8sAgent.enabled=true and k8sAgent.metrics.enabled=true: the PodMonitor scrapes the agent pods' metrics port, which exists only then" -}}
{{- end -}}
{{- if and $agent.enabled $agent.metrics.enabled (eq (int $agent.metrics.port) (int $agent.healthPort)) -}}
{{- fail (printf "k8sAgent.metrics.port=%d is k8sAgent.healthPort too: the metrics and health listeners need ports of their own" (int $agent.metrics.port)) -}}
{{- end -}}
{{- end -}}

{{/* The control plane's RBAC rules (see control-plane-rbac.yaml for why each verb). */}}
{{- define "streamspace.cp.rules" -}}
- apiGroups: ["stream.space"]
  resources: ["sessions"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["stream.space"]
  resources: ["sessions/status"]
  verbs: ["patch"]
- apiGroups: ["stream.space"]
  resources: ["templates", "quotas"]
  verbs: ["list", "watch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}

{{/* The agent's RBAC rules: the same as agent/k8s/rbac.yaml (a test compares them). */}}
{{- define "streamspace.agent.rules" -}}
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["services", "persistentvolumeclaims"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "create", "update"]
{{- end -}}

{{/* The OpenTelemetry variables both the control plane and the agent read
(monitoring.tracing); nothing when no endpoint is set. */}}
{{- define "streamspace.tracingEnv" -}}
{{- $t := .Values.monitoring.tracing -}}
{{- if $t.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $t.otlpEndpoint | quote }}
{{- with $t.sampler }}
- name: OTEL_TRACES_SAMPLER
  value: {{ . | quote }}
{{- end }}
{{- with $t.samplerArg }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- end -}}
