{{/*
Names. Object names carry the release so two releases can share a namespace.
*/}}
{{- define "poolcast.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 30 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 30 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "poolcast.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "poolcast.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "poolcast.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "poolcast.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{- define "poolcast.secretName" -}}
{{ include "poolcast.fullname" . }}-secret
{{- end -}}

{{/*
The chosen node pools as a JSON list of {name, id, ...}: p2p.plusMode.edgeNodePools, or else
edgeNodePool.id alone. Fails naming the key when there is none or an id repeats.
*/}}
{{- define "poolcast.pools" -}}
{{- $pools := .Values.p2p.plusMode.edgeNodePools | default list -}}
{{- if and (not $pools) .Values.edgeNodePool.id -}}
{{- $pools = list (dict "name" "" "id" .Values.edgeNodePool.id) -}}
{{- end -}}
{{- if not $pools -}}
{{- fail "p2p.plusMode.edgeNodePools: at least one node pool is needed ({name, id}, id = the node pool id), or set edgeNodePool.id" -}}
{{- end -}}
{{- $seen := dict -}}
{{- range $i, $p := $pools -}}
{{- if not $p.id -}}
{{- fail (printf "p2p.plusMode.edgeNodePools[%d].id: empty; each pool needs its node pool id" $i) -}}
{{- end -}}
{{- if hasKey $seen $p.id -}}
{{- fail (printf "p2p.plusMode.edgeNodePools[%d].id: pool id %q is listed twice; ids must be unique" $i $p.id) -}}
{{- end -}}
{{- $_ := set $seen $p.id true -}}
{{- end -}}
{{- toJson $pools -}}
{{- end -}}

{{/*
A DNS-label-safe suffix for one pool's objects: the id made safe, plus a hash so that ids that
differ only in characters a name cannot hold stay apart. Call with the pool id.
*/}}
{{- define "poolcast.poolSuffix" -}}
{{- $safe := regexReplaceAll "[^a-z0-9-]+" (lower .) "-" | trunc 16 | trimAll "-" -}}
{{- printf "%s-%s" $safe (sha256sum . | trunc 6) | trimPrefix "-" -}}
{{- end -}}

{{/*
Every registry the chart wires, as a JSON list of {host, url, key, ca}: the entries of
`registries`, then those of registryInstances and acrInstances (ACR EE instances). `key` names
the value an entry came from, for messages; `ca` is the PEM CA of a `registries` entry, if any.
Fails naming the key on an entry that cannot be used.

An ACR entry is one of (comma-separated):
  ID=HOST   the instance's registry endpoint host, labelled by its id (cri-xxx=test-registry-vpc.cn-hangzhou.cr.aliyuncs.com)
  HOST      the endpoint host alone (anything with a dot)
  NAME      the instance name: NAME-registry-vpc.REGION.cr.aliyuncs.com, with REGION from `region`
A bare instance id (cri-xxx) is refused: resolving it needs the ACR OpenAPI
(cr:GetInstanceVpcEndpoint), which poolcast does not call.
*/}}
{{- define "poolcast.registries" -}}
{{- $hostPattern := "^[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?(:[0-9]{1,5})?$" -}}
{{- $out := list -}}
{{- range $i, $r := .Values.registries -}}
{{- $url := $r.endpoint -}}
{{- if not $url -}}
{{- if eq $r.host "docker.io" -}}
{{- $url = "https://registry-1.docker.io" -}}
{{- else -}}
{{- $url = printf "%s://%s" (ternary "http" "https" (default false $r.insecure)) $r.host -}}
{{- end -}}
{{- end -}}
{{- if $r.ca -}}
{{- if not (contains "-----BEGIN CERTIFICATE-----" $r.ca) -}}
{{- fail (printf "registries[%d].ca: not a PEM certificate: expected the CA certificate(s) of %s as -----BEGIN CERTIFICATE----- blocks" $i $r.host) -}}
{{- end -}}
{{- if hasPrefix "http://" $url -}}
{{- fail (printf "registries[%d].ca: %s is reached over plain HTTP (%s), which has no certificate to check; drop ca or use https" $i $r.host $url) -}}
{{- end -}}
{{- end -}}
{{- $out = append $out (dict "host" $r.host "url" (trimSuffix "/" $url) "key" (printf "registries[%d].host" $i) "ca" ($r.ca | default "")) -}}
{{- end -}}
{{- $region := .Values.region | default "" -}}
{{- range $key := list "registryInstances" "acrInstances" -}}
{{- range $entry := splitList "," (index $.Values $key | default "") -}}
{{- $entry = trim $entry -}}
{{- if $entry -}}
{{- $host := "" -}}
{{- if contains "=" $entry -}}
{{- $host = trim (index (splitn "=" 2 $entry) "_1") -}}
{{- else if contains "." $entry -}}
{{- $host = $entry -}}
{{- else if hasPrefix "cri-" $entry -}}
{{- fail (printf "%s: %q is an ACR EE instance id; poolcast cannot resolve it to the instance's endpoint (that needs the Alibaba Cloud API, cr:GetInstanceVpcEndpoint). Write ID=HOST with the instance's registry endpoint host (%s=NAME-registry-vpc.REGION.cr.aliyuncs.com), the host alone, or the instance name with `region` set" $key $entry $entry) -}}
{{- else if regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" $entry -}}
{{- if not $region -}}
{{- fail (printf "region: needed to derive the endpoint of the ACR EE instance named %q in %s (NAME-registry-vpc.REGION.cr.aliyuncs.com); set region (e.g. cn-hangzhou) or write the endpoint host" $entry $key) -}}
{{- end -}}
{{- $host = printf "%s-registry-vpc.%s.cr.aliyuncs.com" $entry $region -}}
{{- end -}}
{{- if not (regexMatch $hostPattern $host) -}}
{{- fail (printf "%s: %q is not an ACR EE instance: expected ID=HOST, HOST or an instance name (e.g. cri-xxx=test-registry-vpc.cn-hangzhou.cr.aliyuncs.com)" $key $entry) -}}
{{- end -}}
{{- $host = lower $host -}}
{{- $out = append $out (dict "host" $host "url" (printf "https://%s" $host) "key" $key) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $seen := dict -}}
{{- range $r := $out -}}
{{- if hasKey $seen $r.host -}}
{{- fail (printf "%s: registry %q is listed twice (also in %s)" $r.key $r.host (index $seen $r.host)) -}}
{{- end -}}
{{- $_ := set $seen $r.host $r.key -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* The mirror's upstreams, `NS=URL`, from poolcast.registries. */}}
{{- define "poolcast.upstreams" -}}
{{- $out := list -}}
{{- range $r := include "poolcast.registries" . | fromJsonArray -}}
{{- $out = append $out (printf "%s=%s" $r.host $r.url) -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* The ConfigMap of the registries' CAs (registries[].ca), mounted at /etc/poolcast-ca. */}}
{{- define "poolcast.caName" -}}
{{ include "poolcast.fullname" . }}-upstream-ca
{{- end -}}

{{/* Every registries[].ca, one after another: the mirrors' upstreamCAFile. Empty: none. */}}
{{- define "poolcast.caBundle" -}}
{{- $pems := list -}}
{{- range $r := include "poolcast.registries" . | fromJsonArray -}}
{{- if $r.ca -}}
{{- $pems = append $pems (trim $r.ca) -}}
{{- end -}}
{{- end -}}
{{- if $pems -}}
{{- printf "%s\n" (join "\n" $pems) -}}
{{- end -}}
{{- end -}}

{{/* A duration value: integers are seconds, as the ACK add-on writes them. */}}
{{- define "poolcast.duration" -}}
{{- if kindIs "string" . -}}{{ . }}{{- else -}}{{ printf "%ds" (int64 .) }}{{- end -}}
{{- end -}}

{{/* A size or rate: strings as written (4GiB, 512M), numbers as whole bytes. */}}
{{- define "poolcast.size" -}}
{{- if kindIs "string" . -}}{{ . }}{{- else -}}{{ printf "%d" (int64 .) }}{{- end -}}
{{- end -}}

{{/* Node affinity term: the pool, plus the p2p-plus-node label when asked. dict: ctx, id, plus */}}
{{- define "poolcast.poolAffinity" -}}
affinity:
  nodeAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      nodeSelectorTerms:
        - matchExpressions:
            - key: {{ .ctx.Values.nodePoolLabel | quote }}
              operator: In
              values: [{{ .id | quote }}]
            {{- if .plus }}
            - key: k8s.aliyun.com/p2p-plus-node
              operator: In
              values: ["true"]
            {{- end }}
{{- end -}}
