#!/usr/bin/env bash
# Render-check the lensflow chart without a cluster: helm lint (strict) and helm template with the
# default values and every ci/*.yaml, parse the output as YAML, and make sure the guards fail the
# render with their message. Needs helm 3 and python3 with PyYAML.
#   HELM=/path/to/helm deploy/helm/check-chart.sh
set -euo pipefail
HELM=${HELM:-helm}
CHART="$(cd "$(dirname "$0")/lensflow" && pwd)"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

render() {  # render NAME [helm args…]: lint + template to $tmp/NAME.yaml, then parse it
  local name=$1; shift
  "$HELM" lint --strict "$CHART" "$@" >/dev/null || fail "helm lint ($name)"
  "$HELM" template ci "$CHART" --namespace lensflow "$@" >"$tmp/$name.yaml" || fail "helm template ($name)"
  python3 - "$tmp/$name.yaml" "$name" <<'PY' || fail "rendered YAML ($name)"
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
for d in docs:
    assert d.get("apiVersion") and d.get("kind") and d["metadata"].get("name"), d
print(f"ok   {sys.argv[2]}: {len(docs)} objects (" + ", ".join(sorted({d['kind'] for d in docs})) + ")")
PY
}

expect_fail() {  # expect_fail NAME MESSAGE-FRAGMENT [helm args…]
  local name=$1 msg=$2; shift 2
  if out=$("$HELM" template ci "$CHART" "$@" 2>&1); then fail "$name: rendered but should have failed"; fi
  grep -qF -- "$msg" <<<"$out" || fail "$name: failed without '$msg': $out"
  echo "ok   $name (refused)"
}

render defaults
for f in "$CHART"/ci/*.yaml; do render "ci-$(basename "$f" .yaml)" -f "$f"; done

expect_fail "empty qdrant.url" "qdrant.url is required" --set qdrant.url=
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
cat >"$tmp/unknown.yaml" <<'YAML'
stageGroups:
  - {name: odd, stages: [nope]}
YAML
expect_fail "unknown stage" 'unknown stage "nope"' -f "$tmp/unknown.yaml"
expect_fail "object store without url" "storage.type=objectStore needs storage.url" --set storage.type=objectStore
echo "chart checks passed"
