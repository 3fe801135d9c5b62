{{/* Names, labels and the decisions several templates share. */}}

{{- define "regcache.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "regcache.fullname" -}}
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

{{/* The memcached objects' name; short enough that pod hostnames stay valid DNS labels. */}}
{{- define "regcache.memcachedName" -}}
{{- printf "%s-memcached" (include "regcache.fullname" .) | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{- define "regcache.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "regcache.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: regcache
{{- end -}}

{{/* Selects the regcache controller pods. */}}
{{- define "regcache.selectorLabels" -}}
app.kubernetes.io/name: {{ include "regcache.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end -}}

{{/* Selects the memcached pods. */}}
{{- define "regcache.memcachedSelectorLabels" -}}
app.kubernetes.io/name: {{ include "regcache.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: memcached
{{- end -}}

{{- define "regcache.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "regcache.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* "true" when leader election is on: always with several replicas, or when asked for. */}}
{{- define "regcache.leaderElect" -}}
{{- if or (gt (int .Values.replicas) 1) .Values.leaderElection.enabled -}}true{{- end -}}
{{- end -}}

{{- define "regcache.leaseName" -}}
{{- default (printf "%s-leader" (include "regcache.fullname" .)) .Values.leaderElection.id -}}
{{- end -}}

{{- define "regcache.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The DNS SRV name of the in-chart memcached's headless Service (port name memcache). */}}
{{- define "regcache.memcachedSrv" -}}
{{- printf "_memcache._tcp.%s.%s.svc.%s" (include "regcache.memcachedName" .) .Release.Namespace .Values.clusterDomain -}}
{{- end -}}

{{/*
Topology spread constraints: the user's list, each given the pods' selector when it names
none. Call with (dict "constraints" LIST "selector" LABELS-YAML).
*/}}
{{- define "regcache.topologySpread" -}}
{{- $selector := fromYaml .selector -}}
{{- range .constraints }}
{{- $c := deepCopy . }}
{{- if not (hasKey $c "labelSelector") }}
{{- $_ := set $c "labelSelector" (dict "matchLabels" $selector) }}
{{- end }}
- {{ toYaml $c | nindent 2 | trim }}
{{- end }}
{{- end -}}

{{/* The Secret holding the registry API's token signing key: the user's, or the chart's. */}}
{{- define "regcache.registryTokenSecret" -}}
{{- default (printf "%s-registry-token-key" (include "regcache.fullname" .)) .Values.registryApi.tokenKey.existingSecret -}}
{{- end -}}

{{/* Fails on a malformed registryApi.upstreams entry; every template that reads them calls it. */}}
{{- define "regcache.checkUpstreams" -}}
{{- range .Values.registryApi.upstreams }}
{{- if not (and (kindIs "map" .) (get . "name") (get . "upstream")) }}
{{- fail (printf "registryApi.upstreams: each entry needs name and upstream ({name: ghcr-io, upstream: ghcr.io}), got %v" .) }}
{{- end }}
{{- if not (regexMatch "^[a-z]([-a-z0-9]*[a-z0-9])?$" .name) }}
{{- fail (printf "registryApi.upstreams: name %q must be a DNS label (lower case letters, digits and '-', starting with a letter): it names a Service" .name) }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The registry limits file: registry.hosts as `--registry-limits-file` reads it. */}}
{{- define "regcache.registryLimits" -}}
{{- $hosts := list }}
{{- range $i, $h := .Values.registry.hosts }}
{{- if not (kindIs "map" $h) }}
{{- fail (printf "registry.hosts[%d] must be a map such as {host: \"*.example.com\", qps: 50}, not %v" $i $h) }}
{{- end }}
{{- if not $h.host }}
{{- fail (printf "registry.hosts[%d] needs a host (a glob over the registry's host name)" $i) }}
{{- end }}
{{- range $k, $v := $h }}
{{- if not (has $k (list "host" "qps" "burst" "concurrency" "countsPulls")) }}
{{- fail (printf "registry.hosts[%d] (%s): unknown key %q; the keys are host, qps, burst, concurrency and countsPulls" $i $h.host $k) }}
{{- end }}
{{- end }}
{{- if and (hasKey $h "countsPulls") (not (kindIs "bool" $h.countsPulls)) }}
{{- fail (printf "registry.hosts[%d] (%s): countsPulls must be true or false, not %v" $i $h.host $h.countsPulls) }}
{{- end }}
{{- $hosts = append $hosts $h }}
{{- end }}
{{- dict "hosts" $hosts | toYaml }}
{{- end }}

{{/*
Discovery's scope: `all` or `labelled`; refused with watchNamespace unless allNamespaces (a
Role cannot read the Namespace's label).
*/}}
{{- define "regcache.discoveryMode" -}}
{{- if .Values.discovery.allNamespaces -}}
all
{{- else if .Values.watchNamespace -}}
{{- fail "discovery.allNamespaces must be true with watchNamespace: regcache cannot read the Namespace's regcache.io/discover label through a Role" -}}
{{- else -}}
labelled
{{- end -}}
{{- end }}
