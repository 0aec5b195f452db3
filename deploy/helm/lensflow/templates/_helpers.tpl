{{/* ============================================================================================
     Names and labels
     ============================================================================================ */}}

{{- define "lensflow.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "lensflow.fullname" -}}
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

{{- define "lensflow.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "lensflow.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lensflow.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "lensflow.labels" -}}
helm.sh/chart: {{ include "lensflow.chart" . }}
{{ include "lensflow.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: lensflow
{{- end -}}

{{/* Selector labels of one stage group. Call with (dict "root" $ "name" $groupName). */}}
{{- define "lensflow.groupSelectorLabels" -}}
{{ include "lensflow.selectorLabels" .root }}
app.kubernetes.io/component: worker
lensflow.io/stage-group: {{ .name }}
{{- end -}}

{{- define "lensflow.groupLabels" -}}
{{ include "lensflow.labels" .root }}
app.kubernetes.io/component: worker
lensflow.io/stage-group: {{ .name }}
{{- end -}}

{{/* Resource name of one stage group. Call with (dict "root" $ "name" $groupName). */}}
{{- define "lensflow.groupFullname" -}}
{{- printf "%s-%s" (include "lensflow.fullname" .root) .name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "lensflow.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "lensflow.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Image reference: repository@digest when a digest is given (the tag is then ignored), else
     repository:tag (tag defaults to the chart's appVersion). Call with (dict "root" $ "image" $img). */}}
{{- define "lensflow.imageRef" -}}
{{- $i := .image -}}
{{- if $i.digest -}}
{{- printf "%s@%s" $i.repository $i.digest -}}
{{- else -}}
{{- printf "%s:%s" $i.repository (default .root.Chart.AppVersion (toString $i.tag)) -}}
{{- end -}}
{{- end -}}

{{- define "lensflow.storageClaimName" -}}
{{- default (printf "%s-storage" (include "lensflow.fullname" .)) .Values.storage.pvc.existingClaim -}}
{{- end -}}

{{- define "lensflow.modelsClaimName" -}}
{{- default (printf "%s-models" (include "lensflow.fullname" .)) .Values.models.persistence.existingClaim -}}
{{- end -}}

{{/* The stage graph, generated from streams/topology.py (`python -m lensflow.streams.topology --json`):
     {stage: {kind, reads, writes, runnable}}. Call with the root context; parse with fromJson. */}}
{{- define "lensflow.topology" -}}
{{- $raw := .Files.Get "files/topology.json" -}}
{{- if not $raw -}}
{{- fail "lensflow: files/topology.json is missing from the chart (generate it: python -m lensflow.streams.topology --json > deploy/helm/lensflow/files/topology.json)" -}}
{{- end -}}
{{- ($raw | fromJson).stages | toJson -}}
{{- end -}}

{{/* ============================================================================================
     Settings → LENSFLOW_* environment
     ============================================================================================ */}}

{{/* One scalar as an environment string: whole floats without exponent (YAML numbers arrive as
     float64), booleans as true/false. */}}
{{- define "lensflow.scalar" -}}
{{- if kindIs "float64" . -}}
{{- if eq . (float64 (int64 .)) }}{{ int64 . }}{{ else }}{{ . }}{{ end -}}
{{- else if kindIs "map" . -}}
{{- fail (printf "lensflow: a setting value cannot be a map (%v); give a JSON string instead" .) -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}

{{/* A setting value: lists are joined with commas (settings.py accepts comma lists or JSON). */}}
{{- define "lensflow.envValue" -}}
{{- if kindIs "slice" . -}}
{{- $parts := list -}}
{{- range . }}{{ $parts = append $parts (include "lensflow.scalar" .) }}{{ end -}}
{{- join "," $parts -}}
{{- else -}}
{{- include "lensflow.scalar" . -}}
{{- end -}}
{{- end -}}

{{/* Environment variable name of a setting key: log_level / LOG_LEVEL / LENSFLOW_LOG_LEVEL → LENSFLOW_LOG_LEVEL. */}}
{{- define "lensflow.settingEnvName" -}}
{{- printf "LENSFLOW_%s" (. | upper | trimPrefix "LENSFLOW_" | replace "-" "_") -}}
{{- end -}}

{{/* Secret settings: never rendered from values; they come from the Secret named by `existingSecret`
     (envFrom) or from `secretKeyRefs` (one secretKeyRef per setting). */}}
{{- define "lensflow.secretSettings" -}}
- api_token
- qdrant_api_key
- kafka_sasl_username
- kafka_sasl_password
- kafka_tls_key_password
- cassandra_username
- cassandra_password
- schema_registry_username
- schema_registry_password
{{- end -}}

{{/* Settings the chart owns through dedicated values; refused in `settings:` maps and `env` lists. */}}
{{- define "lensflow.reservedSettings" -}}
LENSFLOW_KAFKA_BOOTSTRAP: kafka.bootstrap
LENSFLOW_PARTITIONS: kafka.partitions
LENSFLOW_REPLICATION_FACTOR: kafka.replicationFactor
LENSFLOW_MIN_INSYNC_REPLICAS: kafka.minInsyncReplicas
LENSFLOW_TOPIC_PREFIX: kafka.topicPrefix
LENSFLOW_APP_ID: kafka.appId
LENSFLOW_GROUP: "stageGroups[].name (the chart runs each group's workers with --group <name>)"
LENSFLOW_GROUP_INSTANCE_ID: "the chart (the pod name, for state.persistent groups)"
LENSFLOW_SCHEMA_REGISTRY_URL: kafka.schemaRegistryUrl
LENSFLOW_KAFKA_SECURITY_PROTOCOL: kafka.security.protocol
LENSFLOW_KAFKA_SASL_MECHANISM: kafka.security.saslMechanism
LENSFLOW_KAFKA_TLS_CAFILE: kafka.tls
LENSFLOW_KAFKA_TLS_CERTFILE: kafka.tls
LENSFLOW_KAFKA_TLS_KEYFILE: kafka.tls
LENSFLOW_CASSANDRA_HOSTS: cassandra.hosts
LENSFLOW_CASSANDRA_PORT: cassandra.port
LENSFLOW_CASSANDRA_KEYSPACE: cassandra.keyspace
LENSFLOW_CASSANDRA_REPLICATION: cassandra.replication
LENSFLOW_CASSANDRA_REPLICATION_STRATEGY: cassandra.replication
LENSFLOW_CASSANDRA_TLS: cassandra.tls
LENSFLOW_CASSANDRA_TLS_CAFILE: cassandra.tls
LENSFLOW_CASSANDRA_TLS_CERTFILE: cassandra.tls
LENSFLOW_CASSANDRA_TLS_KEYFILE: cassandra.tls
LENSFLOW_QDRANT_URL: qdrant.url
LENSFLOW_STORAGE_URL: storage.url
LENSFLOW_STORAGE_ROOTS: storage.roots
LENSFLOW_WEB_HOST: "(fixed to 0.0.0.0 by the chart)"
LENSFLOW_WEB_PORT: webPort
LENSFLOW_DATA_DIR: dirs.dataDir
LENSFLOW_CACHE_DIR: dirs.cacheDir
LENSFLOW_API_HOST: "(fixed to 0.0.0.0 in the api pods by the chart)"
LENSFLOW_API_PORT: api.port
LENSFLOW_API_JWT_SECRET: "api.auth.jwtSecret (a Secret), never a plain value"
LENSFLOW_API_JWKS_URL: api.auth.jwks.url
LENSFLOW_API_AUDIENCE: api.auth.jwks.audience
LENSFLOW_API_ISSUER: api.auth.jwks.issuer
{{- range (include "lensflow.secretSettings" . | fromYamlArray) }}
{{ include "lensflow.settingEnvName" . }}: "a Secret (existingSecret or secretKeyRefs), never a plain value"
{{- end }}
{{- end -}}

{{/* Render a settings map as a YAML map of env name → string. Call with (dict "settings" $m "where" "settings"). */}}
{{- define "lensflow.settingsEnv" -}}
{{- $reserved := include "lensflow.reservedSettings" . | fromYaml -}}
{{- $out := dict -}}
{{- range $k, $v := .settings -}}
{{- $name := include "lensflow.settingEnvName" $k -}}
{{- if hasKey $reserved $name -}}
{{- fail (printf "lensflow: %s.%s: %s is set by %s, not through a settings map" $.where $k $name (get $reserved $name)) -}}
{{- end -}}
{{- if not (kindIs "invalid" $v) -}}
{{- $_ := set $out $name (include "lensflow.envValue" $v) -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* Refuse plain env entries (extraEnv, stageGroups[].env) that set a reserved or secret setting.
     Call with (dict "names" $listOfNames "where" "extraEnv"). */}}
{{- define "lensflow.checkEnvNames" -}}
{{- $reserved := include "lensflow.reservedSettings" . | fromYaml -}}
{{- range .names -}}
{{- if hasKey $reserved (toString .) -}}
{{- fail (printf "lensflow: %s: %s is set by %s" $.where . (get $reserved (toString .))) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* LENSFLOW_STORAGE_URL as the workers see it. */}}
{{- define "lensflow.storageUrl" -}}
{{- $s := .Values.storage -}}
{{- if $s.url -}}
{{- $s.url | trimSuffix "/" -}}
{{- else if eq $s.type "pvc" -}}
{{- printf "file://%s" ($s.pvc.mountPath | trimSuffix "/") -}}
{{- end -}}
{{- end -}}

{{/* Mount paths of the TLS Secrets. */}}
{{- define "lensflow.kafkaTlsDir" -}}/etc/lensflow/tls/kafka{{- end -}}
{{- define "lensflow.cassandraTlsDir" -}}/etc/lensflow/tls/cassandra{{- end -}}

{{/* Every plain environment variable shared by the workers and the init Job, as a YAML map of
     strings. Rendered into the ConfigMap, and inline into the init Job (a pre-install hook runs
     before the ConfigMap exists). */}}
{{- define "lensflow.configEnv" -}}
{{- $v := .Values -}}
{{- $env := dict -}}
{{- range $k, $val := $v.extraEnv -}}
{{- if not (kindIs "invalid" $val) }}{{ $_ := set $env $k (include "lensflow.envValue" $val) }}{{ end -}}
{{- end -}}
{{- if eq $v.storage.type "objectStore" -}}
{{- range $k, $val := $v.storage.objectStore.env -}}
{{- if not (kindIs "invalid" $val) }}{{ $_ := set $env $k (include "lensflow.envValue" $val) }}{{ end -}}
{{- end -}}
{{- end -}}
{{- $env = merge (include "lensflow.settingsEnv" (dict "settings" $v.settings "where" "settings") | fromYaml) $env -}}
{{- $_ := set $env "LENSFLOW_KAFKA_BOOTSTRAP" (include "lensflow.envValue" $v.kafka.bootstrap) -}}
{{- $_ = set $env "LENSFLOW_PARTITIONS" (include "lensflow.envValue" $v.kafka.partitions) -}}
{{- $_ = set $env "LENSFLOW_REPLICATION_FACTOR" (include "lensflow.envValue" $v.kafka.replicationFactor) -}}
{{- $_ = set $env "LENSFLOW_MIN_INSYNC_REPLICAS" (include "lensflow.envValue" $v.kafka.minInsyncReplicas) -}}
{{- $_ = set $env "LENSFLOW_APP_ID" (include "lensflow.envValue" $v.kafka.appId) -}}
{{- if $v.kafka.topicPrefix }}{{ $_ = set $env "LENSFLOW_TOPIC_PREFIX" (toString $v.kafka.topicPrefix) }}{{ end -}}
{{- if $v.kafka.schemaRegistryUrl }}{{ $_ = set $env "LENSFLOW_SCHEMA_REGISTRY_URL" (toString $v.kafka.schemaRegistryUrl) }}{{ end -}}
{{- $sec := $v.kafka.security -}}
{{- if ne $sec.protocol "PLAINTEXT" }}{{ $_ = set $env "LENSFLOW_KAFKA_SECURITY_PROTOCOL" $sec.protocol }}{{ end -}}
{{- if $sec.saslMechanism }}{{ $_ = set $env "LENSFLOW_KAFKA_SASL_MECHANISM" $sec.saslMechanism }}{{ end -}}
{{- with $v.kafka.tls -}}
{{- if .existingSecret -}}
{{- $dir := include "lensflow.kafkaTlsDir" $ -}}
{{- if .caKey }}{{ $_ = set $env "LENSFLOW_KAFKA_TLS_CAFILE" (printf "%s/%s" $dir .caKey) }}{{ end -}}
{{- if .certKey }}{{ $_ = set $env "LENSFLOW_KAFKA_TLS_CERTFILE" (printf "%s/%s" $dir .certKey) }}{{ end -}}
{{- if .keyKey }}{{ $_ = set $env "LENSFLOW_KAFKA_TLS_KEYFILE" (printf "%s/%s" $dir .keyKey) }}{{ end -}}
{{- end -}}
{{- end -}}
{{- $_ = set $env "LENSFLOW_CASSANDRA_HOSTS" (include "lensflow.envValue" $v.cassandra.hosts) -}}
{{- $_ = set $env "LENSFLOW_CASSANDRA_PORT" (include "lensflow.envValue" $v.cassandra.port) -}}
{{- $_ = set $env "LENSFLOW_CASSANDRA_KEYSPACE" (include "lensflow.envValue" $v.cassandra.keyspace) -}}
{{- if kindIs "map" $v.cassandra.replication -}}
{{- $_ = set $env "LENSFLOW_CASSANDRA_REPLICATION_STRATEGY" (include "lensflow.replicationJson" $v.cassandra.replication) -}}
{{- else -}}
{{- $_ = set $env "LENSFLOW_CASSANDRA_REPLICATION" (include "lensflow.envValue" (default 3 $v.cassandra.replication)) -}}
{{- end -}}
{{- with $v.cassandra.tls -}}
{{- if .enabled -}}
{{- $_ = set $env "LENSFLOW_CASSANDRA_TLS" "true" -}}
{{- if .existingSecret -}}
{{- $dir := include "lensflow.cassandraTlsDir" $ -}}
{{- if .caKey }}{{ $_ = set $env "LENSFLOW_CASSANDRA_TLS_CAFILE" (printf "%s/%s" $dir .caKey) }}{{ end -}}
{{- if .certKey }}{{ $_ = set $env "LENSFLOW_CASSANDRA_TLS_CERTFILE" (printf "%s/%s" $dir .certKey) }}{{ end -}}
{{- if .keyKey }}{{ $_ = set $env "LENSFLOW_CASSANDRA_TLS_KEYFILE" (printf "%s/%s" $dir .keyKey) }}{{ end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if $v.qdrant.url }}{{ $_ = set $env "LENSFLOW_QDRANT_URL" (toString $v.qdrant.url) }}{{ end -}}
{{- $url := include "lensflow.storageUrl" . -}}
{{- if $url }}{{ $_ = set $env "LENSFLOW_STORAGE_URL" $url }}{{ end -}}
{{- if $v.storage.roots }}{{ $_ = set $env "LENSFLOW_STORAGE_ROOTS" (include "lensflow.envValue" $v.storage.roots) }}{{ end -}}
{{- $_ = set $env "LENSFLOW_WEB_HOST" "0.0.0.0" -}}
{{- $_ = set $env "LENSFLOW_WEB_PORT" (include "lensflow.envValue" $v.webPort) -}}
{{- $_ = set $env "LENSFLOW_DATA_DIR" (toString $v.dirs.dataDir) -}}
{{- $_ = set $env "LENSFLOW_CACHE_DIR" (toString $v.dirs.cacheDir) -}}
{{- $_ = set $env "HOME" "/tmp" -}}
{{- toYaml $env -}}
{{- end -}}

{{/* cassandra.replication as a map → the JSON of CQL's replication map, numbers as integers:
     {class: NetworkTopologyStrategy, dc1: 3} → {"class":"NetworkTopologyStrategy","dc1":3}. */}}
{{- define "lensflow.replicationJson" -}}
{{- $out := dict -}}
{{- range $k, $val := . -}}
{{- if or (kindIs "float64" $val) (kindIs "int64" $val) (kindIs "int" $val) -}}
{{- $_ := set $out $k (int64 $val) -}}
{{- else -}}
{{- $_ := set $out $k (toString $val) -}}
{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* env entries with a secretKeyRef per `secretKeyRefs` entry. */}}
{{- define "lensflow.secretEnv" -}}
{{- range $k, $ref := .Values.secretKeyRefs }}
{{- if $ref }}
- name: {{ include "lensflow.settingEnvName" $k }}
  valueFrom:
    secretKeyRef:
      name: {{ $ref.name | quote }}
      key: {{ $ref.key | quote }}
      {{- if hasKey $ref "optional" }}
      optional: {{ $ref.optional }}
      {{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* envFrom Secrets shared by workers and the init Job. */}}
{{- define "lensflow.secretEnvFrom" -}}
{{- with .Values.existingSecret }}
- secretRef:
    name: {{ . }}
{{- end }}
{{- if and (eq .Values.storage.type "objectStore") .Values.storage.objectStore.existingSecret }}
- secretRef:
    name: {{ .Values.storage.objectStore.existingSecret }}
{{- end }}
{{- end -}}

{{/* TLS Secret volumes (Kafka, Cassandra) and their mounts. */}}
{{- define "lensflow.tlsVolumes" -}}
{{- if .Values.kafka.tls.existingSecret }}
- name: kafka-tls
  secret:
    secretName: {{ .Values.kafka.tls.existingSecret }}
    defaultMode: 288  # 0440: readable by the pod's fsGroup
{{- end }}
{{- if and .Values.cassandra.tls.enabled .Values.cassandra.tls.existingSecret }}
- name: cassandra-tls
  secret:
    secretName: {{ .Values.cassandra.tls.existingSecret }}
    defaultMode: 288
{{- end }}
{{- end -}}

{{- define "lensflow.tlsMounts" -}}
{{- if .Values.kafka.tls.existingSecret }}
- name: kafka-tls
  mountPath: {{ include "lensflow.kafkaTlsDir" . }}
  readOnly: true
{{- end }}
{{- if and .Values.cassandra.tls.enabled .Values.cassandra.tls.existingSecret }}
- name: cassandra-tls
  mountPath: {{ include "lensflow.cassandraTlsDir" . }}
  readOnly: true
{{- end }}
{{- end -}}

{{/* ============================================================================================
     Stage groups
     ============================================================================================ */}}

{{/* The effective settings of one group: groupDefaults with the group's keys on top, maps merged one
     level deep (a key present in the group wins, even when false, 0 or empty). Returns YAML; call with
     (dict "root" $ "group" $g) and parse with fromYaml. */}}
{{- define "lensflow.group" -}}
{{- $out := deepCopy (.root.Values.groupDefaults | default dict) -}}
{{- range $k, $v := .group -}}
{{- $d := get $out $k -}}
{{- if and (kindIs "map" $v) (kindIs "map" $d) -}}
{{- $m := deepCopy $d -}}
{{- range $k2, $v2 := $v }}{{ $_ := set $m $k2 $v2 }}{{ end -}}
{{- $_ := set $out $k $m -}}
{{- else -}}
{{- $_ := set $out $k $v -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* The Kafka consumer group (= Faust app id, prefix of the group's changelog topics) of one group:
     <kafka.appId>-<group name>. The worker computes the same from LENSFLOW_APP_ID and its --group
     argument (streams/topology.py consumer_group); KEDA measures this group's lag.
     Call with (dict "root" $ "group" $effectiveGroup). */}}
{{- define "lensflow.groupAppId" -}}
{{- printf "%s-%s" .root.Values.kafka.appId .group.name -}}
{{- end -}}

{{/* Kafka topics (with prefix) whose lag scales a group: keda.topics, else the inputs of its stages
   from the topology. A sink (the join) reads many topics; its lag is measured on those every image
   goes through: the ones a source stage (preprocess) writes. */}}
{{- define "lensflow.groupTopics" -}}
{{- $stages := include "lensflow.topology" .root | fromJson -}}
{{- $names := .group.keda.topics | default list -}}
{{- if not $names -}}
{{- $carried := list -}}
{{- range $n, $s := $stages }}{{ if eq $s.kind "source" }}{{ $carried = concat $carried $s.writes }}{{ end }}{{ end -}}
{{- range .group.stages -}}
{{- $s := get $stages . -}}
{{- $reads := $s.reads | default list -}}
{{- if eq $s.kind "sink" -}}
{{- $every := list -}}
{{- range $reads }}{{ if has . $carried }}{{ $every = append $every . }}{{ end }}{{ end -}}
{{- if $every }}{{ $reads = $every }}{{ end -}}
{{- end -}}
{{- $names = concat $names $reads -}}
{{- end -}}
{{- end -}}
{{- $topics := list -}}
{{- range (uniq $names) }}{{ $topics = append $topics (printf "%s%s" ($.root.Values.kafka.topicPrefix | default "") .) }}{{ end -}}
{{- toYaml $topics -}}
{{- end -}}

{{/* True ("true") when a group runs the join. */}}
{{- define "lensflow.groupRunsJoin" -}}
{{- if has "join" .stages }}true{{ end -}}
{{- end -}}

{{/* Stages that need the Qdrant server (faces: the gallery; join: the image vectors). */}}
{{- define "lensflow.qdrantStages" -}}
- faces
- join
{{- end -}}

{{/* ============================================================================================
     Validation (rendered from every template that loops over the groups)
     ============================================================================================ */}}
{{- define "lensflow.validate" -}}
{{- $v := .Values -}}
{{- $topology := include "lensflow.topology" . | fromJson -}}
{{- $runnable := list -}}
{{- range $n, $s := $topology }}{{ if $s.runnable }}{{ $runnable = append $runnable $n }}{{ end }}{{ end -}}
{{- if not $v.kafka.bootstrap -}}
{{- fail "lensflow: kafka.bootstrap is required (host:port[,host:port])." -}}
{{- end -}}
{{- if not $v.cassandra.hosts -}}
{{- fail "lensflow: cassandra.hosts needs at least one contact point." -}}
{{- end -}}
{{- $p := $v.kafka.partitions -}}
{{- if or (not (or (kindIs "float64" $p) (kindIs "int64" $p) (kindIs "int" $p))) (lt (float64 $p) 1.0) (ne (float64 $p) (float64 (int64 $p))) -}}
{{- fail (printf "lensflow: kafka.partitions must be a positive integer, got %v" $p) -}}
{{- end -}}
{{- if gt (int64 $v.kafka.minInsyncReplicas) (int64 $v.kafka.replicationFactor) -}}
{{- fail (printf "lensflow: kafka.minInsyncReplicas (%d) is above kafka.replicationFactor (%d): no write could ever be acknowledged." (int64 $v.kafka.minInsyncReplicas) (int64 $v.kafka.replicationFactor)) -}}
{{- end -}}
{{- $sec := $v.kafka.security -}}
{{- if and (hasPrefix "SASL_" $sec.protocol) (not $sec.saslMechanism) -}}
{{- fail (printf "lensflow: kafka.security.protocol=%s needs kafka.security.saslMechanism (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)." $sec.protocol) -}}
{{- end -}}
{{- if and $sec.saslMechanism (not (hasPrefix "SASL_" $sec.protocol)) -}}
{{- fail (printf "lensflow: kafka.security.saslMechanism is set but kafka.security.protocol is %s (use SASL_SSL or SASL_PLAINTEXT)." $sec.protocol) -}}
{{- end -}}
{{- if and $v.kafka.tls.existingSecret (not (has $sec.protocol (list "SSL" "SASL_SSL"))) -}}
{{- fail (printf "lensflow: kafka.tls.existingSecret is set but kafka.security.protocol is %s (use SSL or SASL_SSL)." $sec.protocol) -}}
{{- end -}}
{{- if kindIs "map" $v.cassandra.replication -}}
{{- $r := $v.cassandra.replication -}}
{{- if eq (toString $r.class) "NetworkTopologyStrategy" -}}
{{- if lt (len $r) 2 -}}
{{- fail "lensflow: cassandra.replication: NetworkTopologyStrategy needs at least one data centre, e.g. {class: NetworkTopologyStrategy, dc1: 3}." -}}
{{- end -}}
{{- range $dc, $n := $r -}}
{{- if and (ne $dc "class") (or (not (or (kindIs "float64" $n) (kindIs "int64" $n) (kindIs "int" $n))) (lt (float64 $n) 1.0)) -}}
{{- fail (printf "lensflow: cassandra.replication.%s must be a positive replica count, got %v" $dc $n) -}}
{{- end -}}
{{- end -}}
{{- else if eq (toString $r.class) "SimpleStrategy" -}}
{{- if not $r.replication_factor -}}
{{- fail "lensflow: cassandra.replication: SimpleStrategy needs replication_factor." -}}
{{- end -}}
{{- else -}}
{{- fail (printf "lensflow: cassandra.replication.class must be NetworkTopologyStrategy or SimpleStrategy, got %q" (toString $r.class)) -}}
{{- end -}}
{{- end -}}
{{- if not (has $v.storage.type (list "pvc" "objectStore")) -}}
{{- fail (printf "lensflow: storage.type must be pvc or objectStore, got %q" (toString $v.storage.type)) -}}
{{- end -}}
{{- if eq $v.storage.type "pvc" -}}
{{- if and (not $v.storage.pvc.existingClaim) (not $v.storage.pvc.create) -}}
{{- fail "lensflow: storage.type=pvc needs storage.pvc.existingClaim or storage.pvc.create=true." -}}
{{- end -}}
{{- if and $v.storage.url (not (hasPrefix "file://" $v.storage.url)) -}}
{{- fail (printf "lensflow: storage.type=pvc serves file:// URLs; storage.url %q is not one (use storage.type=objectStore)." $v.storage.url) -}}
{{- end -}}
{{- else -}}
{{- if or (not $v.storage.url) (not (contains "://" $v.storage.url)) (hasPrefix "file://" $v.storage.url) -}}
{{- fail "lensflow: storage.type=objectStore needs storage.url with an object-store scheme, e.g. s3://bucket/prefix." -}}
{{- end -}}
{{- end -}}
{{- include "lensflow.checkEnvNames" (dict "names" (keys ($v.extraEnv | default dict)) "where" "extraEnv") -}}
{{- if not $v.stageGroups -}}
{{- fail "lensflow: stageGroups is empty: nothing would run." -}}
{{- end -}}
{{- $seen := dict -}}
{{- range $i, $raw := $v.stageGroups -}}
{{- if not (kindIs "map" $raw) -}}
{{- fail (printf "lensflow: stageGroups[%d] is not a map (name, stages, …)." $i) -}}
{{- end -}}
{{- if not $raw.name -}}
{{- fail (printf "lensflow: stageGroups[%d] has no name." $i) -}}
{{- end -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" $raw.name) -}}
{{- fail (printf "lensflow: stage group name %q must be a DNS label (lower-case letters, digits, '-')." $raw.name) -}}
{{- end -}}
{{- if hasKey $seen $raw.name -}}
{{- fail (printf "lensflow: stage group %q is defined twice." $raw.name) -}}
{{- end -}}
{{- $_ := set $seen $raw.name true -}}
{{- $g := include "lensflow.group" (dict "root" $ "group" $raw) | fromYaml -}}
{{- if not $g.stages -}}
{{- fail (printf "lensflow: stage group %q has no stages." $g.name) -}}
{{- end -}}
{{- range $g.stages -}}
{{- if not (has . $runnable) -}}
{{- fail (printf "lensflow: stage group %q: unknown stage %q (runnable stages, from streams/topology.py: %s)." $g.name . ($runnable | sortAlpha | join ", ")) -}}
{{- end -}}
{{- end -}}
{{- range $g.stages -}}
{{- if and (has . (include "lensflow.qdrantStages" $ | fromYamlArray)) (not $v.qdrant.url) -}}
{{- fail (printf "lensflow: qdrant.url is required: stage group %q runs %s, which uses Qdrant. qdrant-client's local mode locks its storage folder to a single process, so several worker pods cannot share it: deploy a Qdrant server and set qdrant.url (e.g. http://qdrant:6333)." $g.name .) -}}
{{- end -}}
{{- end -}}
{{- $needsModels := list -}}
{{- range $g.stages }}{{ if has (get (get $topology .) "kind") (list "pixel" "derived") }}{{ $needsModels = append $needsModels . }}{{ end }}{{ end -}}
{{- if and $needsModels (not $v.models.fromImage) (not $g.models) (not $v.dirs.cacheExistingClaim) -}}
{{- fail (printf "lensflow: stage group %q runs model stages (%s) but prepares no models and models.fromImage is false: list them in stageGroups[].models (an init container runs `lensflow models prepare` before the worker starts), mount already prepared models with dirs.cacheExistingClaim, or use an image that carries them (the Dockerfile's default) with models.fromImage." $g.name (join ", " $needsModels)) -}}
{{- end -}}
{{- $_ = include "lensflow.settingsEnv" (dict "settings" ($g.settings | default dict) "where" (printf "stageGroups[%s].settings" $g.name)) -}}
{{- $envNames := list -}}
{{- range ($g.env | default list) }}{{ $envNames = append $envNames .name }}{{ end -}}
{{- include "lensflow.checkEnvNames" (dict "names" $envNames "where" (printf "stageGroups[%s].env" $g.name)) -}}
{{- if include "lensflow.groupRunsJoin" $g -}}
{{- $p := int64 $v.kafka.partitions -}}
{{- if and (not $g.keda.enabled) (gt (int64 $g.replicas) $p) -}}
{{- fail (printf "lensflow: stage group %q runs the join with %d replicas, more than kafka.partitions (%d): the join's table has one partition per topic partition, so the extra pods would sit idle. Lower replicas (or raise kafka.partitions before the topics exist)." $g.name (int64 $g.replicas) $p) -}}
{{- end -}}
{{- if and $g.keda.enabled (gt (int64 $g.keda.minReplicaCount) $p) -}}
{{- fail (printf "lensflow: stage group %q runs the join: keda.minReplicaCount (%d) exceeds kafka.partitions (%d)." $g.name (int64 $g.keda.minReplicaCount) $p) -}}
{{- end -}}
{{- end -}}
{{- if and $g.gpu.enabled (lt (int64 $g.gpu.count) 1) -}}
{{- fail (printf "lensflow: stage group %q: gpu.count must be at least 1 when gpu.enabled." $g.name) -}}
{{- end -}}
{{- if and $g.keda.enabled (gt (int64 $g.keda.minReplicaCount) (int64 $g.keda.maxReplicaCount)) -}}
{{- fail (printf "lensflow: stage group %q: keda.minReplicaCount (%d) is above keda.maxReplicaCount (%d)." $g.name (int64 $g.keda.minReplicaCount) (int64 $g.keda.maxReplicaCount)) -}}
{{- end -}}
{{- end -}}
{{- if and $v.initJob.enabled (not $v.initJob.topics) (not $v.initJob.cql) -}}
{{- fail "lensflow: initJob.enabled with neither initJob.topics nor initJob.cql; disable the Job instead." -}}
{{- end -}}
{{- end -}}

{{/* ============================================================================================
     The read service (`lensflow api`)
     ============================================================================================ */}}

{{- define "lensflow.apiFullname" -}}
{{- printf "%s-api" (include "lensflow.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "lensflow.apiSelectorLabels" -}}
{{ include "lensflow.selectorLabels" . }}
app.kubernetes.io/component: api
{{- end -}}

{{- define "lensflow.apiLabels" -}}
{{ include "lensflow.labels" . }}
app.kubernetes.io/component: api
{{- end -}}

{{/* Name of the Secret holding LENSFLOW_API_JWT_SECRET ("" with JWKS). */}}
{{- define "lensflow.apiJwtSecretName" -}}
{{- $s := .Values.api.auth.jwtSecret -}}
{{- if $s.existingSecret -}}
{{- $s.existingSecret -}}
{{- else if or $s.value $s.generate -}}
{{- printf "%s-jwt" (include "lensflow.apiFullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Guards of the api values (rendered from every api template). The schema already requires a
     JWT secret or a JWKS URL; these hold with --skip-schema-validation too. */}}
{{- define "lensflow.validateApi" -}}
{{- $a := .Values.api -}}
{{- $s := $a.auth.jwtSecret -}}
{{- $j := $a.auth.jwks -}}
{{- if not (or $s.existingSecret $s.value $s.generate $j.url) -}}
{{- fail "lensflow: api.enabled needs a way to verify bearer tokens: an HS256 secret (api.auth.jwtSecret.existingSecret + key, api.auth.jwtSecret.value, or api.auth.jwtSecret.generate) or an OIDC issuer's JWKS (api.auth.jwks.url + api.auth.jwks.audience)." -}}
{{- end -}}
{{- if and $s.existingSecret $s.value -}}
{{- fail "lensflow: api.auth.jwtSecret: give existingSecret or value, not both." -}}
{{- end -}}
{{- if and $s.generate (or $s.existingSecret $s.value) -}}
{{- fail "lensflow: api.auth.jwtSecret.generate makes the secret: give no existingSecret or value with it." -}}
{{- end -}}
{{- if and (or $s.existingSecret $s.value $s.generate) $j.url -}}
{{- fail "lensflow: api.auth: give an HS256 secret (jwtSecret) or a JWKS URL (jwks.url), not both." -}}
{{- end -}}
{{- if and (or $s.existingSecret $s.value $s.generate) (not $s.key) -}}
{{- fail "lensflow: api.auth.jwtSecret.key is empty: name the Secret's key holding the HS256 secret." -}}
{{- end -}}
{{- if and $j.url (not $j.audience) -}}
{{- fail "lensflow: api.auth.jwks.url needs api.auth.jwks.audience (the `aud` the tokens must carry)." -}}
{{- end -}}
{{- if not .Values.qdrant.url -}}
{{- fail "lensflow: api.enabled needs qdrant.url: the read service runs on its own only against a Qdrant server (with qdrant-client's local mode the worker that runs the join serves it)." -}}
{{- end -}}
{{- range .Values.stageGroups -}}
{{- if eq (toString .name) "api" -}}
{{- fail "lensflow: a stage group is named \"api\": its objects would take the names of the read service's (api.enabled); rename the group." -}}
{{- end -}}
{{- end -}}
{{- if and $a.autoscaling.enabled (gt (int64 $a.autoscaling.minReplicas) (int64 $a.autoscaling.maxReplicas)) -}}
{{- fail (printf "lensflow: api.autoscaling.minReplicas (%d) is above api.autoscaling.maxReplicas (%d)." (int64 $a.autoscaling.minReplicas) (int64 $a.autoscaling.maxReplicas)) -}}
{{- end -}}
{{- if and $a.autoscaling.enabled (not (dig "requests" "cpu" "" ($a.resources | default dict))) -}}
{{- fail "lensflow: api.autoscaling scales on CPU utilisation, relative to the pods' CPU request: set api.resources.requests.cpu." -}}
{{- end -}}
{{- if and $a.autoscaling.enabled (not (kindIs "invalid" $a.autoscaling.targetMemoryUtilizationPercentage)) (not (dig "requests" "memory" "" ($a.resources | default dict))) -}}
{{- fail "lensflow: api.autoscaling.targetMemoryUtilizationPercentage needs api.resources.requests.memory." -}}
{{- end -}}
{{- if and (not .Values.models.fromImage) (not $a.models) (not .Values.dirs.cacheExistingClaim) -}}
{{- fail "lensflow: api.enabled with models.fromImage false: the API embeds text queries (minilm-l6-v2) and enrolment faces (yunet-sface); list them in api.models or mount prepared models with dirs.cacheExistingClaim." -}}
{{- end -}}
{{- $_ := include "lensflow.settingsEnv" (dict "settings" ($a.settings | default dict) "where" "api.settings") -}}
{{- $envNames := list -}}
{{- range ($a.env | default list) }}{{ $envNames = append $envNames .name }}{{ end -}}
{{- include "lensflow.checkEnvNames" (dict "names" $envNames "where" "api.env") -}}
{{- end -}}
