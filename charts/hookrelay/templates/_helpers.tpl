{{/*
Names, labels and the small pieces both components share. Fixed paths inside the pods live here too, so every
mounted file is named in one place.
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

{{/* Whether control runs on a PostgreSQL database ("true") or on its embedded one (""). */}}
{{- define "hookrelay.database.enabled" -}}
{{- if or .Values.database.url .Values.database.existingSecret -}}true{{- end -}}
{{- end -}}

{{/* Control's replicas: the value, or the default of the mode (2 with a database, 1 without). 0 is a value. */}}
{{- define "hookrelay.control.replicas" -}}
{{- if kindIs "invalid" .Values.control.replicas -}}
{{- if include "hookrelay.database.enabled" . }}2{{ else }}1{{ end -}}
{{- else -}}
{{- int64 .Values.control.replicas -}}
{{- end -}}
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

{{/* Control's gRPC URL as the agents see it: https, since control serves TLS on its only port. */}}
{{- define "hookrelay.controlUrl" -}}
{{- if .Values.agent.controlUrl -}}
{{ .Values.agent.controlUrl }}
{{- else -}}
https://{{ include "hookrelay.control.fullname" . }}.{{ .Release.Namespace }}.svc.{{ .Values.clusterDomain }}:{{ .Values.control.port }}
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
{{- define "hookrelay.paths.emitToken" -}}/etc/hookrelay/emit-token{{- end -}}
{{- define "hookrelay.paths.database" -}}/etc/hookrelay/database{{- end -}}

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
{{- define "hookrelay.emitTokenSecretName" -}}
{{- default (printf "%s-emit-token" (include "hookrelay.fullname" .)) .Values.security.emitToken.existingSecret -}}
{{- end -}}
{{- define "hookrelay.databaseSecretName" -}}
{{- default (printf "%s-database" (include "hookrelay.fullname" .)) .Values.database.existingSecret -}}
{{- end -}}
{{/* The keys of the database Secret that hold the URL and the password ("" = no password file). */}}
{{- define "hookrelay.database.urlKey" -}}
{{- if .Values.database.existingSecret }}{{ .Values.database.urlKey }}{{ else }}url{{ end -}}
{{- end -}}
{{- define "hookrelay.database.passwordKey" -}}
{{- if .Values.database.existingSecret }}{{ .Values.database.passwordKey }}{{ else if .Values.database.password }}password{{ end -}}
{{- end -}}

{{/* DNS names the generated server certificate carries: the control Service and the headless Service (whose name
resolves to every control pod: agents may use it) in every form a client in the cluster may use, the StatefulSet's pods
behind the headless Service, and localhost for `kubectl port-forward`. */}}
{{- define "hookrelay.tls.dnsNames" -}}
{{- $ns := .Release.Namespace -}}
{{- $svc := include "hookrelay.control.fullname" . -}}
{{- $hl := include "hookrelay.control.headless" . -}}
{{- $names := list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.%s" $svc $ns .Values.clusterDomain) $hl (printf "%s.%s" $hl $ns) (printf "%s.%s.svc" $hl $ns) (printf "%s.%s.svc.%s" $hl $ns .Values.clusterDomain) (printf "*.%s.%s.svc" $hl $ns) (printf "*.%s.%s.svc.%s" $hl $ns .Values.clusterDomain) "localhost" -}}
{{- concat $names .Values.security.tls.generate.extraDnsNames | uniq | toJson -}}
{{- end -}}

{{/*
The data (base64, as in a Secret's `data`) of every Secret this chart creates, as JSON: {"tls": {...}, "tokens": {...},
"masterKey": {...}, "emitToken": {...}, "database": {...}}, each present only when the chart creates that Secret. Material comes from
values when given; else from the Secret of an earlier install or upgrade (`lookup`), so upgrades keep the same CA,
certificate, tokens and master key; else it is generated (genCA/genSignedCert, randAlphaNum, randBytes). `lookup`
answers nothing under `helm template` and client-side dry runs, so those render fresh material every time.
Generated once per render and kept in .Values, so the Secrets and the pods' checksum annotation see the same data.
*/}}
{{- define "hookrelay.secretData" -}}
{{- if not (hasKey .Values "hookrelayGeneratedSecretData") -}}
{{- $ns := .Release.Namespace -}}
{{- $sec := .Values.security -}}
{{- $out := dict -}}
{{- if and $sec.tls.enabled (not $sec.tls.existingSecret) -}}
{{- $old := get (lookup "v1" "Secret" $ns (include "hookrelay.tlsSecretName" .) | default dict) "data" | default dict -}}
{{- if $sec.tls.certificate -}}
{{- $_ := set $out "tls" (dict "tls.crt" (b64enc $sec.tls.certificate) "tls.key" (b64enc $sec.tls.privateKey) "ca.crt" (b64enc $sec.tls.ca)) -}}
{{- else if and (get $old "tls.crt") (get $old "tls.key") (get $old "ca.crt") -}}
{{- $_ := set $out "tls" (dict "tls.crt" (get $old "tls.crt") "tls.key" (get $old "tls.key") "ca.crt" (get $old "ca.crt")) -}}
{{- else -}}
{{- $days := int $sec.tls.generate.validityDays -}}
{{- $svc := include "hookrelay.control.fullname" . -}}
{{- $ca := genCA (printf "%s-ca" $svc) $days -}}
{{- $cert := genSignedCert (printf "%s.%s.svc" $svc $ns) (list "127.0.0.1" "::1") (include "hookrelay.tls.dnsNames" . | fromJsonArray) $days $ca -}}
{{- $_ := set $out "tls" (dict "tls.crt" (b64enc $cert.Cert) "tls.key" (b64enc $cert.Key) "ca.crt" (b64enc $ca.Cert)) -}}
{{- end -}}
{{- end -}}
{{- if and $sec.tokens.enabled (not $sec.tokens.existingSecret) -}}
{{- $old := get (lookup "v1" "Secret" $ns (include "hookrelay.tokensSecretName" .) | default dict) "data" | default dict -}}
{{- $agent := $sec.tokens.agentToken | default (get $old "agent-token" | b64dec) | default (randAlphaNum 48) -}}
{{- $admin := $sec.tokens.adminToken | default (get $old "admin-token" | b64dec) | default (randAlphaNum 48) -}}
{{- $lines := list "# control's token file (scope:token per line), written by the hookrelay chart" (printf "agent:%s" $agent) (printf "admin:%s" $admin) -}}
{{- $file := concat $lines $sec.tokens.extraTokens | join "\n" -}}
{{- $_ := set $out "tokens" (dict "tokens" (printf "%s\n" $file | b64enc) "agent-token" (b64enc $agent) "admin-token" (b64enc $admin)) -}}
{{- end -}}
{{- if and $sec.masterKey.enabled (not $sec.masterKey.existingSecret) -}}
{{- $old := get (lookup "v1" "Secret" $ns (include "hookrelay.masterKeySecretName" .) | default dict) "data" | default dict -}}
{{- $key := "" -}}
{{- if $sec.masterKey.value -}}
{{- $key = b64enc $sec.masterKey.value -}}
{{- else if get $old "master.key" -}}
{{- $key = get $old "master.key" -}}
{{- else -}}
{{- /* randBytes answers base64 of the bytes: the file control reads; b64enc makes it Secret data. */ -}}
{{- $key = randBytes 32 | b64enc -}}
{{- end -}}
{{- $_ := set $out "masterKey" (dict "master.key" $key) -}}
{{- end -}}
{{- if and $sec.emitToken.enabled (not $sec.emitToken.existingSecret) -}}
{{- $old := get (lookup "v1" "Secret" $ns (include "hookrelay.emitTokenSecretName" .) | default dict) "data" | default dict -}}
{{- $token := $sec.emitToken.value | default (get $old "emit-token" | b64dec) | default (randAlphaNum 48) -}}
{{- $_ := set $out "emitToken" (dict "emit-token" (b64enc $token)) -}}
{{- end -}}
{{- $db := .Values.database -}}
{{- if and $db.url (not $db.existingSecret) -}}
{{- $data := dict "url" (b64enc $db.url) -}}
{{- if $db.password -}}
{{- $_ := set $data "password" (b64enc $db.password) -}}
{{- end -}}
{{- $_ := set $out "database" $data -}}
{{- end -}}
{{- $_ := set .Values "hookrelayGeneratedSecretData" $out -}}
{{- end -}}
{{- get .Values "hookrelayGeneratedSecretData" | toJson -}}
{{- end -}}

{{/*
Checks the schema cannot express. Rendering fails with the message.
*/}}
{{- define "hookrelay.validate" -}}
{{- $tls := .Values.security.tls -}}
{{- if not $tls.enabled -}}
{{- fail (printf "security.tls.enabled=false is not supported: hookrelay-control refuses to serve plaintext gRPC on a non-loopback address (listenHost %s), so control would not start. Keep TLS on: give security.tls.existingSecret, or the PEM values, or let the chart generate a CA and certificate (the default)" .Values.listenHost) -}}
{{- end -}}
{{- if and (not $tls.existingSecret) (or $tls.certificate $tls.privateKey $tls.ca) (not (and $tls.certificate $tls.privateKey $tls.ca)) -}}
{{- fail "security.tls.certificate, security.tls.privateKey and security.tls.ca go together (agents need the CA to verify control); give all three, or none to let the chart generate them" -}}
{{- end -}}
{{- $tokens := .Values.security.tokens -}}
{{- if and $tokens.enabled $tokens.agentToken (eq $tokens.agentToken $tokens.adminToken) -}}
{{- fail "security.tokens.agentToken and security.tokens.adminToken must differ: control refuses a token file with the same token twice, and agents must not hold an admin token" -}}
{{- end -}}
{{- if le (int .Values.agent.terminationGracePeriodSeconds) (int .Values.agent.shutdownGraceSecs) -}}
{{- fail (printf "agent.terminationGracePeriodSeconds (%d) must be greater than agent.shutdownGraceSecs (%d), or the agent is killed while it drains" (int .Values.agent.terminationGracePeriodSeconds) (int .Values.agent.shutdownGraceSecs)) -}}
{{- end -}}
{{- $db := .Values.database -}}
{{- if and $db.url $db.existingSecret -}}
{{- fail "database.url and database.existingSecret exclude each other: give the URL in values (the chart puts it in a Secret) or the name of a Secret of yours that holds it" -}}
{{- end -}}
{{- if and $db.password (not $db.url) -}}
{{- fail "database.password goes with database.url; with database.existingSecret name the Secret's key in database.passwordKey" -}}
{{- end -}}
{{- if and (include "hookrelay.database.enabled" .) (not .Values.security.masterKey.enabled) -}}
{{- fail "security.masterKey.enabled=false is refused with a database: each control replica would generate its own master key in its data directory, and none could read the endpoint secrets another sealed. Keep the master key on (generated, from values, or an existingSecret)" -}}
{{- end -}}
{{- if not (has .Values.agent.storage.kind (list "hostPath" "pvc" "emptyDir")) -}}
{{- fail (printf "agent.storage.kind must be hostPath, pvc or emptyDir, not %q" .Values.agent.storage.kind) -}}
{{- end -}}
{{- if and (eq .Values.agent.storage.kind "pvc") (not .Values.agent.storage.pvc.existingClaim) (not .Values.agent.storage.pvc.size) -}}
{{- fail "agent.storage.kind=pvc needs agent.storage.pvc.size or agent.storage.pvc.existingClaim" -}}
{{- end -}}
{{- end -}}

{{/* Whether the agents reach control over https (then they get --control-ca). */}}
{{- define "hookrelay.agent.controlTls" -}}
{{- if hasPrefix "https://" (include "hookrelay.controlUrl" .) -}}true{{- end -}}
{{- end -}}

{{/*
Volumes of the Secrets, for the given component ("control" or "agent"). Each component gets only the keys it reads:
control the certificate, its key, the token file and the master key; agents the CA, the agent token and the emit token.
*/}}
{{- define "hookrelay.secretVolumes" -}}
{{- $root := .root -}}
{{- $sec := $root.Values.security -}}
{{- $control := eq .component "control" -}}
{{- if or $control (include "hookrelay.agent.controlTls" $root) }}
- name: tls
  secret:
    secretName: {{ include "hookrelay.tlsSecretName" $root }}
    defaultMode: 0440
    items:
      {{- if $control }}
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
      {{- end }}
      - key: ca.crt
        path: ca.crt
{{- end }}
{{- if $sec.tokens.enabled }}
- name: tokens
  secret:
    secretName: {{ include "hookrelay.tokensSecretName" $root }}
    defaultMode: 0440
    items:
      {{- if $control }}
      - key: tokens
        path: tokens
      {{- else }}
      - key: agent-token
        path: agent-token
      {{- end }}
{{- end }}
{{- if and $sec.masterKey.enabled $control }}
- name: master-key
  secret:
    secretName: {{ include "hookrelay.masterKeySecretName" $root }}
    defaultMode: 0440
    items:
      - key: master.key
        path: master.key
{{- end }}
{{- if and $control (include "hookrelay.database.passwordKey" $root) }}
- name: database
  secret:
    secretName: {{ include "hookrelay.databaseSecretName" $root }}
    defaultMode: 0440
    items:
      - key: {{ include "hookrelay.database.passwordKey" $root }}
        path: password
{{- end }}
{{- if and $sec.emitToken.enabled (not $control) }}
- name: emit-token
  secret:
    secretName: {{ include "hookrelay.emitTokenSecretName" $root }}
    defaultMode: 0440
    items:
      - key: emit-token
        path: emit-token
{{- end }}
{{- end -}}

{{- define "hookrelay.secretMounts" -}}
{{- $root := .root -}}
{{- $sec := $root.Values.security -}}
{{- $control := eq .component "control" -}}
{{- if or $control (include "hookrelay.agent.controlTls" $root) }}
- name: tls
  mountPath: {{ include "hookrelay.paths.tls" $root }}
  readOnly: true
{{- end }}
{{- if $sec.tokens.enabled }}
- name: tokens
  mountPath: {{ include "hookrelay.paths.tokens" $root }}
  readOnly: true
{{- end }}
{{- if and $sec.masterKey.enabled $control }}
- name: master-key
  mountPath: {{ include "hookrelay.paths.masterKey" $root }}
  readOnly: true
{{- end }}
{{- if and $control (include "hookrelay.database.passwordKey" $root) }}
- name: database
  mountPath: {{ include "hookrelay.paths.database" $root }}
  readOnly: true
{{- end }}
{{- if and $sec.emitToken.enabled (not $control) }}
- name: emit-token
  mountPath: {{ include "hookrelay.paths.emitToken" $root }}
  readOnly: true
{{- end }}
{{- end -}}

{{/*
Rolls the pods when Secret material changes: the data of the Secrets this chart creates (stable across upgrades, see
hookrelay.secretData) and the names of existing Secrets. Agents read their CA only at start; control and agents
re-read certificate and token files on their own, but a roll makes every change take effect at once.
*/}}
{{- define "hookrelay.secretsChecksum" -}}
{{- $sec := .Values.security -}}
{{- $db := .Values.database -}}
{{- list (include "hookrelay.secretData" .) $sec.tls.existingSecret $sec.tokens.existingSecret $sec.masterKey.existingSecret $sec.emitToken.existingSecret $db.existingSecret $db.urlKey $db.passwordKey | toJson | sha256sum -}}
{{- end -}}
