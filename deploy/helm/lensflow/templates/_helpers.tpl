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

{{- define "lensflow.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion (toString .Values.image.tag)) -}}
{{- end -}}

{{- define "lensflow.storageClaimName" -}}
{{- default (printf "%s-storage" (include "lensflow.fullname" .)) .Values.storage.pvc.existingClaim -}}
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

{{/* Settings the chart owns through dedicated values; refused in `settings:` maps. */}}
{{- define "lensflow.reservedSettings" -}}
LENSFLOW_KAFKA_BOOTSTRAP: kafka.bootstrap
LENSFLOW_PARTITIONS: kafka.partitions
LENSFLOW_REPLICATION_FACTOR: kafka.replicationFactor
LENSFLOW_TOPIC_PREFIX: kafka.topicPrefix
LENSFLOW_APP_ID: kafka.appId
LENSFLOW_SCHEMA_REGISTRY_URL: kafka.schemaRegistryUrl
LENSFLOW_CASSANDRA_HOSTS: cassandra.hosts
LENSFLOW_CASSANDRA_PORT: cassandra.port
LENSFLOW_CASSANDRA_KEYSPACE: cassandra.keyspace
LENSFLOW_CASSANDRA_REPLICATION: cassandra.replication
LENSFLOW_QDRANT_URL: qdrant.url
LENSFLOW_QDRANT_API_KEY: "the Secret named by existingSecret"
LENSFLOW_STORAGE_URL: storage.url
LENSFLOW_STORAGE_ROOTS: storage.roots
LENSFLOW_WEB_HOST: "(fixed to 0.0.0.0 by the chart)"
LENSFLOW_WEB_PORT: webPort
LENSFLOW_DATA_DIR: dirs.dataDir
LENSFLOW_CACHE_DIR: dirs.cacheDir
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

{{/* LENSFLOW_STORAGE_URL as the workers see it. */}}
{{- define "lensflow.storageUrl" -}}
{{- $s := .Values.storage -}}
{{- if $s.url -}}
{{- $s.url | trimSuffix "/" -}}
{{- else if eq $s.type "pvc" -}}
{{- printf "file://%s" ($s.pvc.mountPath | trimSuffix "/") -}}
{{- end -}}
{{- end -}}

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
{{- $_ = set $env "LENSFLOW_APP_ID" (include "lensflow.envValue" $v.kafka.appId) -}}
{{- if $v.kafka.topicPrefix }}{{ $_ = set $env "LENSFLOW_TOPIC_PREFIX" (toString $v.kafka.topicPrefix) }}{{ end -}}
{{- if $v.kafka.schemaRegistryUrl }}{{ $_ = set $env "LENSFLOW_SCHEMA_REGISTRY_URL" (toString $v.kafka.schemaRegistryUrl) }}{{ end -}}
{{- $_ = set $env "LENSFLOW_CASSANDRA_HOSTS" (include "lensflow.envValue" $v.cassandra.hosts) -}}
{{- $_ = set $env "LENSFLOW_CASSANDRA_PORT" (include "lensflow.envValue" $v.cassandra.port) -}}
{{- $_ = set $env "LENSFLOW_CASSANDRA_KEYSPACE" (include "lensflow.envValue" $v.cassandra.keyspace) -}}
{{- $_ = set $env "LENSFLOW_CASSANDRA_REPLICATION" (include "lensflow.envValue" $v.cassandra.replication) -}}
{{- $_ = set $env "LENSFLOW_QDRANT_URL" (toString $v.qdrant.url) -}}
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

{{/* Kafka topics (with prefix) whose lag scales a group: keda.topics, else the stages' inputs. */}}
{{- define "lensflow.groupTopics" -}}
{{- $topics := list -}}
{{- $names := .group.keda.topics | default list -}}
{{- if not $names -}}
{{- range .group.stages }}{{ $names = concat $names (get $.root.Values.stageInputTopics . | default list) }}{{ end -}}
{{- end -}}
{{- range (uniq $names) }}{{ $topics = append $topics (printf "%s%s" ($.root.Values.kafka.topicPrefix | default "") .) }}{{ end -}}
{{- toYaml $topics -}}
{{- end -}}

{{/* True ("true") when a group runs the join. */}}
{{- define "lensflow.groupRunsJoin" -}}
{{- if has "join" .stages }}true{{ end -}}
{{- end -}}

{{/* ============================================================================================
     Validation (rendered from configmap.yaml, which is always part of the release)
     ============================================================================================ */}}
{{- define "lensflow.validate" -}}
{{- $v := .Values -}}
{{- if not $v.qdrant.url -}}
{{- fail "lensflow: qdrant.url is required. qdrant-client's local mode locks its storage folder to a single process, so several worker pods cannot share it: deploy a Qdrant server and set qdrant.url (e.g. http://qdrant:6333)." -}}
{{- end -}}
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
{{- if not (hasKey $v.stageInputTopics .) -}}
{{- fail (printf "lensflow: stage group %q: unknown stage %q (known: %s). A new stage needs an entry in stageInputTopics." $g.name . (keys $v.stageInputTopics | sortAlpha | join ", ")) -}}
{{- end -}}
{{- end -}}
{{- $_ = include "lensflow.settingsEnv" (dict "settings" ($g.settings | default dict) "where" (printf "stageGroups[%s].settings" $g.name)) -}}
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
{{- end -}}
{{- if and $v.initJob.enabled (not $v.initJob.topics) (not $v.initJob.cql) -}}
{{- fail "lensflow: initJob.enabled with neither initJob.topics nor initJob.cql; disable the Job instead." -}}
{{- end -}}
{{- end -}}
