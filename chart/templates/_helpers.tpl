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
edgeNodePool.id alone. The seeds' placeholder entry ({name: "", id: ""}) counts as none. With
no pool named, all nodes are one pool, id "all" (`all: true`: no pool affinity), as the ACK
add-ons deploy to every (edge) node then. Fails naming the key when an id repeats or a named
pool has no id.
*/}}
{{- define "poolcast.pools" -}}
{{- $pools := list -}}
{{- range $i, $p := .Values.p2p.plusMode.edgeNodePools | default list -}}
{{- if or $p.id $p.name -}}
{{- if not $p.id -}}
{{- fail (printf "p2p.plusMode.edgeNodePools[%d].id: empty; pool %q needs its node pool id" $i $p.name) -}}
{{- end -}}
{{- $pools = append $pools $p -}}
{{- end -}}
{{- end -}}
{{- if and (not $pools) .Values.edgeNodePool.id -}}
{{- $pools = list (dict "name" "" "id" .Values.edgeNodePool.id) -}}
{{- end -}}
{{- if not $pools -}}
{{- $pools = list (dict "name" "all nodes" "id" "all" "all" true) -}}
{{- end -}}
{{- $seen := dict -}}
{{- range $i, $p := $pools -}}
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

An ACR entry (of registryInstances, acrInstances or p2p.registryInstances) is one of
(comma-separated):
  ID        an instance id (cri-xxx): not here; the components resolve it at run time through
            the ACR OpenAPI (poolcast.acrInstances)
  ID=HOST   the instance's registry endpoint host, labelled by its id (cri-xxx=test-registry-vpc.cn-hangzhou.cr.aliyuncs.com)
  HOST      the endpoint host alone (anything with a dot)
  NAME      the instance name: NAME-registry-vpc.REGION.cr.aliyuncs.com, with REGION from `region`
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
{{- range $key := list "registryInstances" "acrInstances" "p2p.registryInstances" -}}
{{- range $entry := splitList "," (include "poolcast.instanceValue" (dict "ctx" $ "key" $key)) -}}
{{- $entry = trim $entry -}}
{{- if $entry -}}
{{- $host := "" -}}
{{- if contains "=" $entry -}}
{{- $host = trim (index (splitn "=" 2 $entry) "_1") -}}
{{- else if contains "." $entry -}}
{{- $host = $entry -}}
{{- else if regexMatch "^cri-[a-z0-9]+$" $entry -}}
{{- /* An instance id: resolved at run time (poolcast.acrInstances), not here. */ -}}
{{- else if regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" $entry -}}
{{- if not $region -}}
{{- fail (printf "region: needed to derive the endpoint of the ACR EE instance named %q in %s (NAME-registry-vpc.REGION.cr.aliyuncs.com); set region (e.g. cn-hangzhou) or write the endpoint host" $entry $key) -}}
{{- end -}}
{{- $host = printf "%s-registry-vpc.%s.cr.aliyuncs.com" $entry $region -}}
{{- end -}}
{{- if not (regexMatch "^cri-[a-z0-9]+$" $entry) -}}
{{- if not (regexMatch $hostPattern $host) -}}
{{- fail (printf "%s: %q is not an ACR EE instance: expected an instance id (cri-xxx), ID=HOST, HOST or an instance name (e.g. cri-xxx=test-registry-vpc.cn-hangzhou.cr.aliyuncs.com)" $key $entry) -}}
{{- end -}}
{{- $host = lower $host -}}
{{- $out = append $out (dict "host" $host "url" (printf "https://%s" $host) "key" $key) -}}
{{- end -}}
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

{{/* Node affinity term: the pool, plus the p2p-plus-node label when asked. dict: ctx, id, plus,
all (the one pool of all nodes: no pool term) */}}
{{- define "poolcast.poolAffinity" -}}
{{- if .all -}}
{{- if .plus -}}
affinity:
  nodeAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      nodeSelectorTerms:
        - matchExpressions:
            - key: k8s.aliyun.com/p2p-plus-node
              operator: In
              values: ["true"]
{{- end -}}
{{- else -}}
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
{{- end -}}

{{/* The value of an instances key ("p2p.registryInstances" is nested). dict: ctx, key */}}
{{- define "poolcast.instanceValue" -}}
{{- if eq .key "p2p.registryInstances" -}}
{{- .ctx.Values.p2p.registryInstances | default "" -}}
{{- else -}}
{{- index .ctx.Values .key | default "" -}}
{{- end -}}
{{- end -}}

{{/*
ACR EE instance ids (cri-xxx) named in registryInstances, acrInstances or p2p.registryInstances,
as a JSON list: the mirrors, the agents' hosts.toml writer and the webhook resolve them at run
time (GetInstanceVpcEndpoint, ListInstanceEndpoint) with the credentials below.
*/}}
{{- define "poolcast.acrInstances" -}}
{{- $out := list -}}
{{- range $key := list "registryInstances" "acrInstances" "p2p.registryInstances" -}}
{{- range $entry := splitList "," (include "poolcast.instanceValue" (dict "ctx" $ "key" $key)) -}}
{{- $entry = trim $entry -}}
{{- if and (regexMatch "^cri-[a-z0-9]+$" $entry) (not (has $entry $out)) -}}
{{- $out = append $out $entry -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* The Secret holding accessKey/accessKeySecret (method 2). */}}
{{- define "poolcast.cloudSecretName" -}}
{{ include "poolcast.fullname" . }}-alibaba-cloud
{{- end -}}

{{/* Where RRSA's projected service-account token is mounted (ACK's path). */}}
{{- define "poolcast.rrsaTokenDir" -}}
/var/run/secrets/ack.alibabacloud.com/rrsa-tokens
{{- end -}}

{{/*
The `acr` block of a component's config (no secret: credentials come from the environment).
dict: ctx, cacheFile
*/}}
{{- define "poolcast.acrConfig" -}}
{{- $v := .ctx.Values -}}
{{- $c := dict "instances" (include "poolcast.acrInstances" .ctx | fromJsonArray) -}}
{{- with $v.region }}{{ $_ := set $c "region" . }}{{ end -}}
{{- with $v.vpcId }}{{ $_ := set $c "vpcId" . }}{{ end -}}
{{- if and $v.rrsa.enable $v.rrsa.assumeRoleARN -}}
{{- $_ := set $c "assumeRoleARN" $v.rrsa.assumeRoleARN -}}
{{- $_ := set $c "expireDuration" (int $v.rrsa.expireDuration) -}}
{{- end -}}
{{- with ($v.controller | default dict).ramRole }}{{ $_ := set $c "ramRole" . }}{{ end -}}
{{- with .cacheFile }}{{ $_ := set $c "cacheFile" . }}{{ end -}}
{{- $_ := set $c "refreshInterval" (include "poolcast.duration" $v.acr.refreshInterval) -}}
{{- with $v.acr.openapiEndpoint }}{{ $_ := set $c "openapiEndpoint" . }}{{ end -}}
{{- with $v.acr.stsEndpoint }}{{ $_ := set $c "stsEndpoint" . }}{{ end -}}
{{- with $v.acr.metadataEndpoint }}{{ $_ := set $c "metadataEndpoint" . }}{{ end -}}
{{- toJson $c -}}
{{- end -}}

{{/*
Environment of a container that calls the ACR OpenAPI, in the official SDKs' names: the
AccessKey from its Secret (never a ConfigMap or an argument), or RRSA's role and token file;
with neither, the ECS metadata server's role. The node's region label, when the pod carries it.
*/}}
{{- define "poolcast.acrEnv" -}}
{{- $v := .Values -}}
{{- if $v.accessKey }}
- name: ALIBABA_CLOUD_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef: {name: {{ include "poolcast.cloudSecretName" . }}, key: accessKey}
- name: ALIBABA_CLOUD_ACCESS_KEY_SECRET
  valueFrom:
    secretKeyRef: {name: {{ include "poolcast.cloudSecretName" . }}, key: accessKeySecret}
{{- end }}
{{- if $v.rrsa.enable }}
- name: ALIBABA_CLOUD_ROLE_ARN
  value: {{ $v.rrsa.rrsaRoleARN | quote }}
- name: ALIBABA_CLOUD_OIDC_PROVIDER_ARN
  value: {{ $v.rrsa.rrsaOIDCProviderRoleARN | quote }}
- name: ALIBABA_CLOUD_OIDC_TOKEN_FILE
  value: {{ printf "%s/token" (include "poolcast.rrsaTokenDir" .) | quote }}
{{- end }}
- name: POOLCAST_NODE_REGION
  valueFrom:
    fieldRef: {fieldPath: "metadata.labels['topology.kubernetes.io/region']"}
{{- end -}}

{{/* The RRSA token's volume mount, when RRSA is on. */}}
{{- define "poolcast.acrMounts" -}}
{{- if .Values.rrsa.enable }}
- name: rrsa-token
  mountPath: {{ include "poolcast.rrsaTokenDir" . }}
  readOnly: true
{{- end }}
{{- end -}}

{{/* The RRSA token volume: the pod's service-account token for audience sts.aliyuncs.com. */}}
{{- define "poolcast.acrVolumes" -}}
{{- if .Values.rrsa.enable }}
- name: rrsa-token
  projected:
    sources:
      - serviceAccountToken:
          audience: sts.aliyuncs.com
          expirationSeconds: 3600
          path: token
{{- end }}
{{- end -}}

{{/* Pod annotations for ASK (controller.ramRole): ECI hands the pod that role's credentials. */}}
{{- define "poolcast.acrAnnotations" -}}
{{- with (.Values.controller | default dict).ramRole }}
k8s.aliyun.com/eci-ram-role-name: {{ . | quote }}
{{- end }}
{{- end -}}

{{/*
The agent pods' mounts of the node's runtime configuration: containerd's config_path, CRI-O's
registries.conf.d unless runtime is containerd, and with detect (the hosts containers, not the
agent) the host's /run, read only, where runtime auto looks for the runtimes' sockets.
*/}}
{{- define "poolcast.runtimeMounts" -}}
- name: containerd-config-path
  mountPath: /host/containerd-config-path
{{- if ne .runtime "containerd" }}
- name: crio-registries
  mountPath: /host/registries.conf.d
{{- end }}
{{- if and .detect (eq .runtime "auto") }}
- name: host-run
  mountPath: /host/run
  readOnly: true
{{- end }}
{{- end }}

{{/*
Prometheus scrape annotations of a pod template (metrics.scrapeAnnotations): the component's
/metrics on port .port.
*/}}
{{- define "poolcast.scrapeAnnotations" -}}
{{- if .ctx.Values.metrics.scrapeAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | int | toString | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}

{{/*
`--otlp-endpoint URL` appended to a component's args list when tracing.otlp.endpoint is set.
*/}}
{{- define "poolcast.otlpArgs" -}}
{{- with .Values.tracing.otlp.endpoint -}}
, "--otlp-endpoint", {{ . | toJson }}
{{- end -}}
{{- end }}
