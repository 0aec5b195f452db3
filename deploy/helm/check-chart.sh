#!/usr/bin/env bash
# Check the lensflow chart without a cluster:
#   * helm lint --strict and helm template with the default values, every ci/*.yaml and a few inline
#     cases (values.schema.json is applied by both);
#   * every rendered object validated by kubeconform -strict against the Kubernetes $K8S_VERSION
#     schemas (PyPI kubernetes-validate, made standalone by tools.sh) and the CRD schemas in
#     deploy/helm/schemas/ (KEDA, Prometheus Operator); an object without a schema fails;
#   * the guards (template `fail`s and schema errors) refuse what they must, with their message;
#   * the PrometheusRule: `promtool check rules` on every rendered one, and `promtool test rules` with
#     deploy/helm/tests/rules/*.test.yaml on the one rendered from deploy/helm/tests/rules/values.yaml
#     (each alert must have a case that fires and one that does not);
#   * values-dev.yaml, the `helm test` Pod (templates/tests/: `helm template` renders test hooks, so it is
#     in every render; also alone with --show-only, through the API and through Kafka) and NOTES.txt.
# Tools: helm, kubeconform and promtool from tools.sh (built once into ~/.cache/lensflow/tools), unless
# HELM, KUBECONFORM, PROMTOOL and K8S_SCHEMAS are all given. Needs python3 with PyYAML ($PYTHON, default python3).
#   deploy/helm/check-chart.sh
#   RENDER_DIR=/tmp/out deploy/helm/check-chart.sh     # keep the rendered manifests (NAME.yaml)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
CHART="$HERE/lensflow"
fail() { echo "FAIL: $*" >&2; exit 1; }

if [[ -z ${HELM:-} || -z ${KUBECONFORM:-} || -z ${PROMTOOL:-} || -z ${K8S_SCHEMAS:-} ]]; then
  tools=$("$HERE/tools.sh") || fail "deploy/helm/tools.sh could not install helm/kubeconform/promtool/schemas (see above)"
  eval "$tools"
fi
K8S_VERSION=${K8S_VERSION:-1.29.0}
PYTHON=${PYTHON:-python3}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
out=${RENDER_DIR:-$tmp/rendered}; mkdir -p "$out"
echo "helm $("$HELM" version --template '{{.Version}}'), kubeconform, promtool $("$PROMTOOL" --version 2>&1 | awk 'NR == 1 {print $3}'), Kubernetes $K8S_VERSION schemas"

kubeconform() {  # kubeconform FILE: every object must have a schema and match it
  "$KUBECONFORM" -strict -summary -output text -kubernetes-version "$K8S_VERSION" \
    -schema-location "$K8S_SCHEMAS/{{ .NormalizedKubernetesVersion }}-standalone{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
    -schema-location "$HERE/schemas/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json" \
    "$1"
}

# The validation itself must bite: a misspelt field, in a core kind and in a custom resource, and a
# kind without a schema are refused.
cat >"$tmp/bad.yaml" <<'YAML'
apiVersion: apps/v1
kind: Deployment
metadata: {name: bad}
spec:
  selector: {matchLabels: {a: b}}
  template:
    metadata: {labels: {a: b}}
    spec:
      containers: [{name: c, image: x, imagePullPolicy: IfNotPresent, envFrom: [{secretRef: {nam: s}}]}]
---
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata: {name: bad}
spec:
  scaleTargetRef: {name: bad}
  fallback: {failureTreshold: 3, replicas: 1}
  triggers: [{type: kafka, metadata: {topic: t}}]
---
apiVersion: example.com/v1
kind: Unknown
metadata: {name: bad}
YAML
kc_out=$(kubeconform "$tmp/bad.yaml" 2>&1) && fail "kubeconform accepted invalid objects: $kc_out"
grep -q "Invalid: 2, Errors: 1" <<<"$kc_out" || fail "kubeconform did not refuse the invalid objects as expected: $kc_out"
echo "ok   kubeconform refuses misspelt fields and kinds without a schema"

render() {  # render NAME [helm args…]: lint + template to $out/NAME.yaml, parse it, kubeconform it
  local name=$1; shift
  "$HELM" lint --strict --kube-version "$K8S_VERSION" "$CHART" "$@" >"$tmp/lint.txt" 2>&1 \
    || { cat "$tmp/lint.txt" >&2; fail "helm lint ($name)"; }
  "$HELM" template ci "$CHART" --namespace lensflow --kube-version "$K8S_VERSION" "$@" >"$out/$name.yaml" \
    || fail "helm template ($name)"
  "$PYTHON" - "$out/$name.yaml" <<'PY' || fail "rendered YAML ($name)"
import sys, yaml
for d in yaml.safe_load_all(open(sys.argv[1])):
    if d:
        assert d.get("apiVersion") and d.get("kind") and d["metadata"].get("name"), d
PY
  kubeconform "$out/$name.yaml" >"$tmp/kc.txt" 2>&1 || { cat "$tmp/kc.txt" >&2; fail "kubeconform ($name)"; }
  echo "ok   $name: $(tail -1 "$tmp/kc.txt" | sed 's/^Summary: //')"
}

expect_fail() {  # expect_fail NAME MESSAGE-FRAGMENT [helm args…]
  local name=$1 msg=$2; shift 2
  if out_=$("$HELM" template ci "$CHART" --kube-version "$K8S_VERSION" "$@" 2>&1); then fail "$name: rendered but should have failed"; fi
  grep -qF -- "$msg" <<<"$out_" || fail "$name: failed without '$msg': $out_"
  echo "ok   $name (refused)"
}

render defaults
for f in "$CHART"/ci/*.yaml; do render "ci-$(basename "$f" .yaml)" -f "$f"; done
# A split without Qdrant-using stages needs no qdrant.url.
cat >"$tmp/no-qdrant.yaml" <<'YAML'
qdrant: {url: ""}
stageGroups:
  - {name: preprocess, stages: [preprocess]}
YAML
render no-qdrant-split -f "$tmp/no-qdrant.yaml"

# --- alerts: promtool ----------------------------------------------------------------------------
# The rule groups of each rendered PrometheusRule go into a Prometheus rules file: `promtool check
# rules` on all of them, and the unit tests of deploy/helm/tests/rules/ (their rule_files name
# lensflow-rules.yaml, the render of tests/rules/values.yaml) run beside a copy of that file.
TESTS="$HERE/tests/rules"
render alert-rules -f "$TESTS/values.yaml"
rules="$tmp/rules"; mkdir -p "$rules"
for f in "$out"/*.yaml; do
  "$PYTHON" - "$f" "$rules/$(basename "$f" .yaml).rules.yaml" <<'PY' || fail "PrometheusRule of $(basename "$f")"
import sys, yaml
rules = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "PrometheusRule"]
assert len(rules) <= 1, "more than one PrometheusRule"
if rules:
    yaml.safe_dump({"groups": rules[0]["spec"]["groups"]}, open(sys.argv[2], "w"), sort_keys=False)
PY
done
[[ -f $rules/alert-rules.rules.yaml ]] || fail "tests/rules/values.yaml rendered no PrometheusRule"
for f in "$rules"/*.rules.yaml; do
  "$PROMTOOL" check rules "$f" >"$tmp/promtool.txt" 2>&1 || { cat "$tmp/promtool.txt" >&2; fail "promtool check rules ($(basename "$f"))"; }
  echo "ok   promtool check rules $(basename "$f" .rules.yaml): $(grep -o 'SUCCESS: [0-9]* rules found' "$tmp/promtool.txt")"
done
"$PYTHON" - "$rules/alert-rules.rules.yaml" "$TESTS"/*.test.yaml <<'PY' || fail "the rule unit tests do not cover every alert"
import sys, yaml
alerts = [r["alert"] for g in yaml.safe_load(open(sys.argv[1]))["groups"] for r in g["rules"] if "alert" in r]
cases = [t for f in sys.argv[2:] for test in yaml.safe_load(open(f))["tests"] for t in test.get("alert_rule_test", [])]
fires = {t["alertname"] for t in cases if t.get("exp_alerts")}
quiet = {t["alertname"] for t in cases if not t.get("exp_alerts")}
missing = [f"{a} ({' and '.join(w for w, s in (('fires', fires), ('stays quiet', quiet)) if a not in s)})"
           for a in alerts if a not in fires or a not in quiet]
assert not missing, "no test case in which " + ", ".join(missing)
unknown = (fires | quiet) - set(alerts)
assert not unknown, f"tests of alerts the rules do not have: {sorted(unknown)}"
PY
cp "$TESTS"/*.test.yaml "$rules/"
cp "$rules/alert-rules.rules.yaml" "$rules/lensflow-rules.yaml"
(cd "$rules" && "$PROMTOOL" test rules ./*.test.yaml) >"$tmp/promtool.txt" 2>&1 \
  || { cat "$tmp/promtool.txt" >&2; fail "promtool test rules (deploy/helm/tests/rules)"; }
echo "ok   promtool test rules: $(ls "$TESTS"/*.test.yaml | wc -l) files, every alert has a case that fires and one that does not"

# --- template guards ---------------------------------------------------------------------------
expect_fail "empty qdrant.url" "qdrant.url is required" --set qdrant.url=
cat >"$tmp/faces.yaml" <<'YAML'
qdrant: {url: ""}
dirs: {cacheExistingClaim: models}
stageGroups:
  - {name: preprocess, stages: [preprocess]}
  - {name: people, stages: [faces]}
YAML
expect_fail "faces without qdrant.url" 'stage group "people" runs faces' -f "$tmp/faces.yaml"
cat >"$tmp/join.yaml" <<'YAML'
kafka: {partitions: 2}
stageGroups:
  - {name: join, stages: [join], replicas: 3}
YAML
expect_fail "join above partitions" "more than kafka.partitions" -f "$tmp/join.yaml"
cat >"$tmp/group-setting.yaml" <<'YAML'
stageGroups:
  - {name: preprocess, stages: [preprocess], settings: {app_id: other}}
YAML
expect_fail "reserved group setting" "is set by kafka.appId" -f "$tmp/group-setting.yaml"
expect_fail "reserved setting" "is set by kafka.bootstrap" --set settings.kafka_bootstrap=x:9092
expect_fail "secret in settings" "LENSFLOW_API_TOKEN is set by a Secret" --set settings.api_token=hunter2
expect_fail "secret in extraEnv" "LENSFLOW_QDRANT_API_KEY is set by a Secret" --set extraEnv.LENSFLOW_QDRANT_API_KEY=k
cat >"$tmp/secret-env.yaml" <<'YAML'
stageGroups:
  - name: preprocess
    stages: [preprocess]
    env: [{name: LENSFLOW_CASSANDRA_PASSWORD, value: hunter2}]
YAML
expect_fail "secret in a group's env" "LENSFLOW_CASSANDRA_PASSWORD is set by a Secret" -f "$tmp/secret-env.yaml"
cat >"$tmp/unknown.yaml" <<'YAML'
stageGroups:
  - {name: odd, stages: [nope]}
YAML
expect_fail "unknown stage" 'unknown stage "nope"' -f "$tmp/unknown.yaml"
cat >"$tmp/inline.yaml" <<'YAML'
stageGroups:
  - {name: odd, stages: [metadata]}
YAML
expect_fail "inline stage is not runnable" 'unknown stage "metadata"' -f "$tmp/inline.yaml"
cat >"$tmp/no-models.yaml" <<'YAML'
models: {fromImage: false}
stageGroups:
  - {name: vision, stages: [objects, scene]}
YAML
expect_fail "model stages without models" 'stage group "vision" runs model stages (objects, scene)' -f "$tmp/no-models.yaml"
expect_fail "group names are unique (one consumer group each)" 'stage group "preprocess" is defined twice' \
  --set 'stageGroups[0].name=preprocess' --set 'stageGroups[0].stages[0]=preprocess' \
  --set 'stageGroups[1].name=preprocess' --set 'stageGroups[1].stages[0]=join'
expect_fail "object store without url" "storage.type=objectStore needs storage.url" --set storage.type=objectStore
expect_fail "min.insync above replication" "kafka.minInsyncReplicas (3) is above kafka.replicationFactor (2)" \
  --set kafka.replicationFactor=2 --set kafka.minInsyncReplicas=3
expect_fail "SASL without mechanism" "needs kafka.security.saslMechanism" --set kafka.security.protocol=SASL_SSL
expect_fail "Kafka TLS files over PLAINTEXT" "kafka.tls.existingSecret is set but kafka.security.protocol is PLAINTEXT" \
  --set kafka.tls.existingSecret=kafka-ca
expect_fail "NetworkTopologyStrategy without a DC" "NetworkTopologyStrategy needs at least one data centre" \
  --set cassandra.replication.class=NetworkTopologyStrategy
expect_fail "KEDA TriggerAuthentication without Secret" "kedaTriggerAuthentication.create needs kedaTriggerAuthentication.secretName" \
  --set kedaTriggerAuthentication.create=true

# --- values.schema.json ------------------------------------------------------------------------
expect_fail "misspelt key" "'bootstap' not allowed" --set kafka.bootstap=kafka:9092
expect_fail "removed key" "'stageInputTopics' not allowed" --set stageInputTopics.preprocess[0]=images.uploaded
expect_fail "removed lag-exporter alert" "'consumerLag' not allowed" --set prometheusRule.consumerLag.lagMetric=kafka_consumergroup_lag
expect_fail "misspelt alert setting" "'treshold' not allowed" --set alerts.consumerLagGrowing.treshold=10
expect_fail "runbook URL with an anchor" "/alerts/runbookBaseUrl" --set alerts.runbookBaseUrl=https://x.example/runbooks.md#top
expect_fail "misspelt group key" "'replica' not allowed" --set 'stageGroups[0].name=preprocess' --set 'stageGroups[0].stages[0]=preprocess' --set 'stageGroups[0].replica=2'
expect_fail "wrong type" "/kafka/partitions" --set-string kafka.partitions=six
expect_fail "bad digest" "/image/digest" --set image.digest=latest
expect_fail "unknown secret setting" "'api_tokn' not allowed" --set secretKeyRefs.api_tokn.name=s --set secretKeyRefs.api_tokn.key=k
expect_fail "replication class" "/cassandra/replication/class" --set cassandra.replication.class=LocalStrategy
expect_fail "unknown model" "/stageGroups/0/models/0" --set 'stageGroups[0].name=v' --set 'stageGroups[0].stages[0]=objects' --set 'stageGroups[0].models[0]=coco'
# --- the read API (api.*) ------------------------------------------------------------------------
# ci/api-secret-values.yaml (HS256 from an existing Secret) and ci/api-jwks-values.yaml (JWKS, Ingress
# with TLS) are rendered above; here the Secret the chart creates from a value, and the guards.
render api-created-secret --set api.enabled=true --set api.auth.jwtSecret.value=0123456789abcdef0123456789abcdef \
  --set api.autoscaling.enabled=false --set serviceMonitor.enabled=true
expect_fail "api without token verification (schema)" "at '/api/auth': 'anyOf' failed" --set api.enabled=true
expect_fail "api without token verification (template, schema skipped)" "api.enabled needs a way to verify bearer tokens" \
  --set api.enabled=true --skip-schema-validation
expect_fail "api JWKS without audience" "/api/auth/jwks/audience" --set api.enabled=true --set api.auth.jwks.url=https://issuer.example/jwks
expect_fail "api HS256 secret and JWKS at once" "give an HS256 secret (jwtSecret) or a JWKS URL (jwks.url), not both" \
  --set api.enabled=true --set api.auth.jwtSecret.existingSecret=s --set api.auth.jwks.url=https://issuer.example/jwks \
  --set api.auth.jwks.audience=lensflow
expect_fail "api existing Secret and value at once" "give existingSecret or value, not both" \
  --set api.enabled=true --set api.auth.jwtSecret.existingSecret=s --set api.auth.jwtSecret.value=v
expect_fail "api JWT secret as a setting" "LENSFLOW_API_JWT_SECRET is set by api.auth.jwtSecret" \
  --set api.enabled=true --set api.auth.jwtSecret.existingSecret=s --set api.settings.api_jwt_secret=hunter2
expect_fail "api port as a setting" "LENSFLOW_API_PORT is set by api.port" --set settings.api_port=9000
expect_fail "api without a Qdrant server" "api.enabled needs qdrant.url" \
  -f "$tmp/no-qdrant.yaml" --set api.enabled=true --set api.auth.jwtSecret.existingSecret=s
expect_fail "stage group named api" 'a stage group is named "api"' \
  --set api.enabled=true --set api.auth.jwtSecret.existingSecret=s --set 'stageGroups[0].name=api' --set 'stageGroups[0].stages[0]=preprocess'
expect_fail "api HPA bounds" "api.autoscaling.minReplicas (5) is above api.autoscaling.maxReplicas (3)" \
  --set api.enabled=true --set api.auth.jwtSecret.existingSecret=s --set api.autoscaling.minReplicas=5 --set api.autoscaling.maxReplicas=3
expect_fail "api HPA without a CPU request" "set api.resources.requests.cpu" \
  --set api.enabled=true --set api.auth.jwtSecret.existingSecret=s --set api.resources.requests.cpu=null
expect_fail "api Ingress without hosts" "api.ingress.enabled needs at least one entry in api.ingress.hosts" \
  --set api.enabled=true --set api.auth.jwtSecret.existingSecret=s --set api.ingress.enabled=true --set-json 'api.ingress.hosts=[]'
expect_fail "misspelt api Ingress TLS key" "'secretname' not allowed" \
  --set api.enabled=true --set api.auth.jwtSecret.existingSecret=s --set 'api.ingress.tls[0].secretname=x'
expect_fail "misspelt api key" "'replica' not allowed" --set api.replica=3
# --- values-dev.yaml, the helm test hook, NOTES.txt ------------------------------------------------
render dev -f "$CHART/values-dev.yaml"
# Renders of one template go to $out/parts/ (not whole releases: the tests of whole renders skip them).
mkdir -p "$out/parts"
test_pod() {  # test_pod NAME WAY [helm args…]: the test hook alone, kubeconform'd, submitting WAY (api|kafka)
  local name=$1 way=$2; shift 2
  "$HELM" template ci "$CHART" --namespace lensflow --kube-version "$K8S_VERSION" \
    --show-only templates/tests/submit-test.yaml "$@" >"$out/parts/$name.yaml" || fail "helm template --show-only ($name)"
  kubeconform "$out/parts/$name.yaml" >"$tmp/kc.txt" 2>&1 || { cat "$tmp/kc.txt" >&2; fail "kubeconform ($name)"; }
  grep -q '"helm.sh/hook": test' "$out/parts/$name.yaml" || fail "$name: not a test hook"
  grep -q "lensflow.io/submit-via: $way" "$out/parts/$name.yaml" || fail "$name: does not submit through $way"
  echo "ok   $name: the helm test Pod, through $way"
}
test_pod test-pod-kafka kafka
test_pod test-pod-api api --set api.enabled=true --set api.auth.jwtSecret.existingSecret=s
test_pod test-pod-jwks kafka -f "$CHART/ci/api-jwks-values.yaml"
"$HELM" template ci "$CHART" --kube-version "$K8S_VERSION" --set tests.enabled=false | grep -q 'helm.sh/hook": test' \
  && fail "tests.enabled=false still renders the test Pod"
echo "ok   tests.enabled=false renders no test Pod"
# NOTES.txt as `helm install` prints it (`helm install --dry-run` wants a cluster here): rendered with
# tpl into a ConfigMap by a copy of the chart, written to $out/parts/notes-NAME.yaml.
notes() {  # notes NAME [helm args…]
  local name=$1; shift
  rm -rf "$tmp/notes-chart"; cp -r "$CHART" "$tmp/notes-chart"
  cp "$CHART/templates/NOTES.txt" "$tmp/notes-chart/files/NOTES.txt"
  printf '%s\n' 'apiVersion: v1' 'kind: ConfigMap' 'metadata: {name: notes}' \
    'data: {notes: {{ tpl (.Files.Get "files/NOTES.txt") . | toJson }}}' >"$tmp/notes-chart/templates/zz-notes.yaml"
  "$HELM" template ci "$tmp/notes-chart" --namespace lensflow --kube-version "$K8S_VERSION" \
    --show-only templates/zz-notes.yaml "$@" >"$out/parts/notes-$name.yaml" || fail "NOTES.txt ($name)"
  echo "ok   NOTES.txt ($name)"
}
notes defaults
notes dev -f "$CHART/values-dev.yaml"
expect_fail "generated API secret beside a value" "api.auth.jwtSecret.generate makes the secret" \
  --set api.enabled=true --set api.auth.jwtSecret.generate=true --set api.auth.jwtSecret.value=v --skip-schema-validation
expect_fail "test user with a space" "/tests/user" --set "tests.user=a b"
echo "chart checks passed"
