{{/* Names */}}
{{- define "rbs.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "rbs.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/part-of: rbs
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: include "rbs.selectorLabels" (list . "gateway") */}}
{{- define "rbs.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: rbs-{{ index . 1 }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
{{- end -}}

{{/*
Agent pods are created by the orchestrator, not by helm; KubernetesComputeService labels them
app.kubernetes.io/name=rbs-agent, app.kubernetes.io/managed-by=rbs-orchestrator and
app.kubernetes.io/instance=<Orchestrator:Kubernetes:Instance>, which the chart sets to the release name.
*/}}
{{- define "rbs.agentSelectorLabels" -}}
app.kubernetes.io/name: rbs-agent
app.kubernetes.io/managed-by: rbs-orchestrator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Image reference: include "rbs.image" (list . .Values.gateway.image) */}}
{{- define "rbs.image" -}}
{{- $root := index . 0 -}}
{{- $image := index . 1 -}}
{{- printf "%s%s:%s" $root.Values.global.imageRegistry $image.repository ($image.tag | default $root.Values.global.imageTag | default $root.Chart.AppVersion) -}}
{{- end -}}

{{- define "rbs.agentNamespace" -}}
{{- .Values.agent.namespace | default .Release.Namespace -}}
{{- end -}}

{{- define "rbs.orchestratorServiceAccount" -}}
{{- if .Values.orchestrator.serviceAccount.create -}}
{{- .Values.orchestrator.serviceAccount.name | default (printf "%s-orchestrator" (include "rbs.fullname" .)) -}}
{{- else -}}
{{- .Values.orchestrator.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{- define "rbs.agentServiceAccount" -}}
{{- if .Values.agent.serviceAccount.create -}}
{{- .Values.agent.serviceAccount.name | default (printf "%s-agent" (include "rbs.fullname" .)) -}}
{{- else -}}
{{- .Values.agent.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "rbs.secretName" -}}
{{- .Values.auth.existingSecret | default (printf "%s-auth" (include "rbs.fullname" .)) -}}
{{- end -}}

{{- define "rbs.gatewayPublicAddress" -}}
{{- if .Values.gateway.publicAddress -}}
{{- .Values.gateway.publicAddress -}}
{{- else if .Values.ingress.enabled -}}
{{- printf "%s://%s" (ternary "https" "http" .Values.ingress.tls.enabled) .Values.ingress.host -}}
{{- end -}}
{{- end -}}

{{- define "rbs.agentGatewayAddress" -}}
{{- .Values.agent.gatewayAddress | default (printf "http://%s-gateway.%s.svc:%v" (include "rbs.fullname" .) .Release.Namespace .Values.gateway.ports.tunnel) -}}
{{- end -}}

{{/* Kubernetes resource map → env value ("" stays ""). */}}
{{- define "rbs.quantity" -}}
{{- if . }}{{ . | toString }}{{ end -}}
{{- end -}}

{{/*
The orchestrator's configuration. Keys are the code's options (Section:Key → Section__Key); the test
Tests/Helm/HelmChartConfigKeyTests.cs checks every `name: X__Y` below against the options classes.
*/}}
{{- define "rbs.orchestratorEnv" -}}
- name: Orchestrator__Backend
  value: kubernetes
- name: Orchestrator__ListenAddress
  value: "0.0.0.0"
- name: Orchestrator__Port
  value: {{ .Values.orchestrator.port | quote }}
- name: Orchestrator__DefaultConnectMode
  value: {{ .Values.orchestrator.defaultConnectMode | quote }}
{{- /* Without a public address there is no gateway for clients: agents then do not dial out and tunnel mode is off
       (with defaultConnectMode tunnel the orchestrator refuses to start and says so). */}}
{{- if include "rbs.gatewayPublicAddress" . }}
- name: Orchestrator__Gateway__PublicAddress
  value: {{ include "rbs.gatewayPublicAddress" . | quote }}
- name: Orchestrator__Gateway__AgentAddress
  value: {{ include "rbs.agentGatewayAddress" . | quote }}
- name: Orchestrator__Gateway__Relay
  value: {{ or .Values.gateway.relay (not .Values.ingress.enabled) | quote }}
{{- end }}
{{- with .Values.orchestrator.agentIdleTimeout }}
- name: Orchestrator__IdleTtl
  value: {{ . | quote }}
{{- end }}
- name: Orchestrator__Gateway__TokenKey
  valueFrom:
    secretKeyRef:
      name: {{ include "rbs.secretName" . }}
      key: token-signing-key
- name: Orchestrator__Gateway__AcceptedTokenKeys
  valueFrom:
    secretKeyRef:
      name: {{ include "rbs.secretName" . }}
      key: accepted-token-keys
      optional: true
{{- range $i, $k := .Values.auth.apiKeys }}
- name: Orchestrator__ApiKeys__{{ $i }}__User
  value: {{ $k.user | quote }}
- name: Orchestrator__ApiKeys__{{ $i }}__Key
  valueFrom:
    secretKeyRef:
      name: {{ include "rbs.secretName" $ }}
      key: api-key-{{ $i }}
{{- end }}
{{- /*
State store: the orchestrator picks PostgreSQL when Orchestrator:Postgres:ConnectionString is set, SQLite
(Orchestrator:StatePath) otherwise. postgres and spanner both use the PostgreSQL store: Spanner is reached
through PGAdapter, which speaks the PostgreSQL protocol (a sidecar on localhost, or the dev emulator's pod).
*/}}
{{- if eq .Values.state.type "sqlite" }}
- name: Orchestrator__StatePath
  value: {{ .Values.state.sqlite.path | quote }}
{{- else }}
- name: Orchestrator__Postgres__ConnectionString
{{- if eq .Values.state.type "postgres" }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.state.postgres.existingSecret | default (include "rbs.secretName" .) }}
      key: {{ ternary .Values.state.postgres.existingSecretKey "postgres-connection-string" (ne .Values.state.postgres.existingSecret "") }}
{{- else if .Values.state.spanner.emulator.enabled }}
  value: {{ printf "Host=%s-spanner-emulator;Port=5432;Database=%s;SSL Mode=Disable" (include "rbs.fullname" .) .Values.state.spanner.database | quote }}
{{- else }}
  value: {{ printf "Host=localhost;Port=5432;Database=%s;SSL Mode=Disable" .Values.state.spanner.database | quote }}
{{- end }}
{{- end }}
- name: Orchestrator__Kubernetes__Namespace
  value: {{ include "rbs.agentNamespace" . | quote }}
- name: Orchestrator__Kubernetes__Instance
  value: {{ .Release.Name | quote }}
- name: Orchestrator__Kubernetes__AgentImage
  value: {{ include "rbs.image" (list . .Values.agent.image) | quote }}
- name: Orchestrator__Kubernetes__ImagePullPolicy
  value: {{ .Values.agent.image.pullPolicy | quote }}
{{- range $i, $s := .Values.global.imagePullSecrets }}
- name: Orchestrator__Kubernetes__ImagePullSecrets__{{ $i }}
  value: {{ $s | quote }}
{{- end }}
- name: Orchestrator__Kubernetes__ServiceAccountName
  value: {{ include "rbs.agentServiceAccount" . | quote }}
- name: Orchestrator__Kubernetes__AgentPort
  value: {{ .Values.agent.port | quote }}
- name: Orchestrator__Kubernetes__CpuRequest
  value: {{ include "rbs.quantity" .Values.agent.resources.requests.cpu | quote }}
- name: Orchestrator__Kubernetes__MemoryRequest
  value: {{ include "rbs.quantity" .Values.agent.resources.requests.memory | quote }}
- name: Orchestrator__Kubernetes__CpuLimit
  value: {{ include "rbs.quantity" .Values.agent.resources.limits.cpu | quote }}
- name: Orchestrator__Kubernetes__MemoryLimit
  value: {{ include "rbs.quantity" .Values.agent.resources.limits.memory | quote }}
- name: Orchestrator__Kubernetes__PodReadyTimeout
  value: {{ .Values.agent.podReadyTimeout | quote }}
- name: Orchestrator__Kubernetes__UnschedulableGracePeriod
  value: {{ .Values.agent.unschedulableGracePeriod | quote }}
- name: Orchestrator__Kubernetes__DeleteGracePeriod
  value: {{ .Values.agent.deleteGracePeriod | quote }}
- name: Orchestrator__Kubernetes__WorkspacePath
  value: {{ .Values.agent.workspace.path | quote }}
- name: Orchestrator__Kubernetes__WorkspaceSizeLimit
  value: {{ .Values.agent.workspace.sizeLimit | quote }}
- name: Orchestrator__Kubernetes__WorkspaceClaimName
  value: {{ .Values.agent.workspace.claimName | quote }}
- name: Orchestrator__Kubernetes__WorkspaceFromImage
  value: {{ .Values.agent.workspace.fromImage | quote }}
{{- range $k, $v := .Values.agent.nodeSelector }}
- name: Orchestrator__Kubernetes__NodeSelector__{{ $k }}
  value: {{ $v | quote }}
{{- end }}
{{- range $i, $t := .Values.agent.tolerations }}
- name: Orchestrator__Kubernetes__Tolerations__{{ $i }}__Key
  value: {{ $t.key | default "" | quote }}
- name: Orchestrator__Kubernetes__Tolerations__{{ $i }}__Operator
  value: {{ $t.operator | default "Equal" | quote }}
- name: Orchestrator__Kubernetes__Tolerations__{{ $i }}__Value
  value: {{ $t.value | default "" | quote }}
- name: Orchestrator__Kubernetes__Tolerations__{{ $i }}__Effect
  value: {{ $t.effect | default "" | quote }}
{{- end }}
{{- with .Values.orchestrator.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "rbs.gatewayEnv" -}}
- name: Gateway__PublicListen
  value: {{ printf "0.0.0.0:%v" .Values.gateway.ports.grpc | quote }}
- name: Gateway__AgentListen
  value: {{ printf "0.0.0.0:%v" .Values.gateway.ports.tunnel | quote }}
- name: Gateway__RelayListen
  value: {{ printf "0.0.0.0:%v" .Values.gateway.ports.relay | quote }}
- name: Gateway__OrchestratorAddress
  value: {{ printf "http://%s-orchestrator.%s.svc:%v" (include "rbs.fullname" .) .Release.Namespace .Values.orchestrator.port | quote }}
- name: Gateway__TokenKey
  valueFrom:
    secretKeyRef:
      name: {{ include "rbs.secretName" . }}
      key: token-signing-key
- name: Gateway__AcceptedTokenKeys
  valueFrom:
    secretKeyRef:
      name: {{ include "rbs.secretName" . }}
      key: accepted-token-keys
      optional: true
{{- with .Values.gateway.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}
