{{/*
Names, labels and the small pieces both components share. Fixed paths inside the pods live here too, so the
security release finds every mounted file in one place.
*/}}

{{- define "hookrelay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Resource name prefix; kept short enough for "-control-headless" and the StatefulSet's pod names. */}}
{{- define "hookrelay.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "hookrelay.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "hookrelay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hookrelay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "hookrelay.labels" -}}
helm.sh/chart: {{ include "hookrelay.chart" . }}
{{ include "hookrelay.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: hookrelay
{{- end -}}

{{/* Resource names of the components. */}}
{{- define "hookrelay.control.fullname" -}}{{ include "hookrelay.fullname" . }}-control{{- end -}}
{{- define "hookrelay.control.headless" -}}{{ include "hookrelay.fullname" . }}-control-headless{{- end -}}
{{- define "hookrelay.agent.fullname" -}}{{ include "hookrelay.fullname" . }}-agent{{- end -}}

{{- define "hookrelay.control.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{ include "hookrelay.control.fullname" . }}
{{- else -}}
{{ default "default" .Values.serviceAccount.name }}
{{- end -}}
{{- end -}}

{{- define "hookrelay.agent.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{ include "hookrelay.agent.fullname" . }}
{{- else -}}
{{ default "default" .Values.serviceAccount.name }}
{{- end -}}
{{- end -}}

{{/* The hookrelay image: repository@digest when a digest is set, else repository:tag (tag defaults to appVersion). */}}
{{- define "hookrelay.image" -}}
{{- include "hookrelay.imageRef" (dict "image" .Values.image "defaultTag" .Chart.AppVersion) -}}
{{- end -}}

{{- define "hookrelay.imageRef" -}}
{{- if .image.digest -}}
{{ .image.repository }}@{{ .image.digest }}
{{- else -}}
{{ .image.repository }}:{{ default .defaultTag .image.tag }}
{{- end -}}
{{- end -}}

{{/* Control's gRPC URL as the agents see it. */}}
{{- define "hookrelay.controlUrl" -}}
{{- if .Values.agent.controlUrl -}}
{{ .Values.agent.controlUrl }}
{{- else -}}
http://{{ include "hookrelay.control.fullname" . }}.{{ .Release.Namespace }}.svc.{{ .Values.clusterDomain }}:{{ .Values.control.port }}
{{- end -}}
{{- end -}}

{{- define "hookrelay.agent.hostPath" -}}
{{- default (printf "/var/lib/hookrelay/%s/%s" .Release.Namespace (include "hookrelay.fullname" .)) .Values.agent.storage.hostPath.path -}}
{{- end -}}

{{/* Fixed paths inside the pods. */}}
{{- define "hookrelay.paths.controlData" -}}/var/lib/hookrelay/control{{- end -}}
{{- define "hookrelay.paths.agentData" -}}/var/lib/hookrelay/agent{{- end -}}
{{- define "hookrelay.paths.tls" -}}/etc/hookrelay/tls{{- end -}}
{{- define "hookrelay.paths.tokens" -}}/etc/hookrelay/tokens{{- end -}}
{{- define "hookrelay.paths.masterKey" -}}/etc/hookrelay/master-key{{- end -}}

{{/* Secret names: the existing one, or the one this chart creates. */}}
{{- define "hookrelay.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "hookrelay.fullname" .)) .Values.security.tls.existingSecret -}}
{{- end -}}
{{- define "hookrelay.tokensSecretName" -}}
{{- default (printf "%s-tokens" (include "hookrelay.fullname" .)) .Values.security.tokens.existingSecret -}}
{{- end -}}
{{- define "hookrelay.masterKeySecretName" -}}
{{- default (printf "%s-master-key" (include "hookrelay.fullname" .)) .Values.security.masterKey.existingSecret -}}
{{- end -}}

{{/*
Checks the schema cannot express: a Secret enabled without its material, a grace period that cannot cover the
agent's drain. Rendering fails with the message.
*/}}
{{- define "hookrelay.validate" -}}
{{- $tls := .Values.security.tls -}}
{{- if and $tls.enabled (not $tls.existingSecret) (not (and $tls.certificate $tls.privateKey)) -}}
{{- fail "security.tls.enabled needs security.tls.existingSecret, or security.tls.certificate and security.tls.privateKey" -}}
{{- end -}}
{{- $tokens := .Values.security.tokens -}}
{{- if and $tokens.enabled (not $tokens.existingSecret) (not (and $tokens.tokensFile $tokens.agentToken)) -}}
{{- fail "security.tokens.enabled needs security.tokens.existingSecret, or security.tokens.tokensFile and security.tokens.agentToken" -}}
{{- end -}}
{{- $mk := .Values.security.masterKey -}}
{{- if and $mk.enabled (not $mk.existingSecret) (not $mk.value) -}}
{{- fail "security.masterKey.enabled needs security.masterKey.existingSecret or security.masterKey.value" -}}
{{- end -}}
{{- if le (int .Values.agent.terminationGracePeriodSeconds) (int .Values.agent.shutdownGraceSecs) -}}
{{- fail (printf "agent.terminationGracePeriodSeconds (%d) must be greater than agent.shutdownGraceSecs (%d), or the agent is killed while it drains" (int .Values.agent.terminationGracePeriodSeconds) (int .Values.agent.shutdownGraceSecs)) -}}
{{- end -}}
{{- if not (has .Values.agent.storage.kind (list "hostPath" "pvc" "emptyDir")) -}}
{{- fail (printf "agent.storage.kind must be hostPath, pvc or emptyDir, not %q" .Values.agent.storage.kind) -}}
{{- end -}}
{{- if and (eq .Values.agent.storage.kind "pvc") (not .Values.agent.storage.pvc.existingClaim) (not .Values.agent.storage.pvc.size) -}}
{{- fail "agent.storage.kind=pvc needs agent.storage.pvc.size or agent.storage.pvc.existingClaim" -}}
{{- end -}}
{{- end -}}

{{/* Volumes and mounts of the Secrets, for the given component ("control" or "agent"). */}}
{{- define "hookrelay.secretVolumes" -}}
{{- $root := .root -}}
{{- $sec := $root.Values.security -}}
{{- if $sec.tls.enabled }}
- name: tls
  secret:
    secretName: {{ include "hookrelay.tlsSecretName" $root }}
    defaultMode: 0440
{{- end }}
{{- if $sec.tokens.enabled }}
- name: tokens
  secret:
    secretName: {{ include "hookrelay.tokensSecretName" $root }}
    defaultMode: 0440
    {{- if eq .component "agent" }}
    items:
      - key: agent-token
        path: agent-token
    {{- end }}
{{- end }}
{{- if and $sec.masterKey.enabled (eq .component "control") }}
- name: master-key
  secret:
    secretName: {{ include "hookrelay.masterKeySecretName" $root }}
    defaultMode: 0440
    items:
      - key: master.key
        path: master.key
{{- end }}
{{- end -}}

{{- define "hookrelay.secretMounts" -}}
{{- $sec := .root.Values.security -}}
{{- if $sec.tls.enabled }}
- name: tls
  mountPath: {{ include "hookrelay.paths.tls" .root }}
  readOnly: true
{{- end }}
{{- if $sec.tokens.enabled }}
- name: tokens
  mountPath: {{ include "hookrelay.paths.tokens" .root }}
  readOnly: true
{{- end }}
{{- if and $sec.masterKey.enabled (eq .component "control") }}
- name: master-key
  mountPath: {{ include "hookrelay.paths.masterKey" .root }}
  readOnly: true
{{- end }}
{{- end -}}

{{/* Rolls the pods when a Secret this chart creates changes. */}}
{{- define "hookrelay.secretsChecksum" -}}
{{- $sec := .Values.security -}}
{{- list $sec.tls $sec.tokens $sec.masterKey | toJson | sha256sum -}}
{{- end -}}
