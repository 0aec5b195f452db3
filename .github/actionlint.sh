#!/usr/bin/env bash
# Lint the GitHub Actions workflows (.github/workflows/*.yml) with actionlint, built from the Go module
# proxy like the chart's tools (deploy/helm/tools.sh): go install github.com/rhysd/actionlint/cmd/actionlint
# into ~/.cache/lensflow/tools/bin ($LENSFLOW_TOOLS_DIR), kept while it is the pinned version, so a rerun
# takes a second. actionlint checks the workflow syntax, expressions and their types, the `needs` graph,
# runner labels, and the inputs and outputs of popular actions (docker/*, actions/*); it runs the `run:`
# scripts through shellcheck when shellcheck is on PATH (Debian: apt-get install -y shellcheck), and
# says so. It cannot run a workflow: no registry and no runner are reachable here.
#   .github/actionlint.sh                 # build when needed, lint, exit non-zero on any finding
# Run by tests/unit/test_release.py. Needs go (Debian: apt-get install -y golang-go).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
ACTIONLINT_VERSION=${ACTIONLINT_VERSION:-v1.7.12}
TOOLS=${LENSFLOW_TOOLS_DIR:-$HOME/.cache/lensflow/tools}

die() { echo "actionlint.sh: ERROR: $*" >&2; exit 1; }

mkdir -p "$TOOLS/bin"
export GOBIN="$TOOLS/bin" GOPATH="$TOOLS/go" GOCACHE="$TOOLS/go-build"
export GOMODCACHE="$TOOLS/go/pkg/mod" GOFLAGS="-modcacherw -buildvcs=false" CGO_ENABLED=0
export GOTOOLCHAIN=${GOTOOLCHAIN:-local}
bin="$GOBIN/actionlint"

built_version() { [[ -x $bin ]] && go version -m "$bin" 2>/dev/null | awk '$1 == "mod" && $2 == "github.com/rhysd/actionlint" {print $3}'; }
if [[ $(built_version || true) != "$ACTIONLINT_VERSION" ]]; then
  command -v go >/dev/null || die "go is not installed (Debian: apt-get install -y golang-go); needed to build actionlint"
  echo "actionlint.sh: building actionlint $ACTIONLINT_VERSION (go install github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION)" >&2
  go install "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION" >&2 \
    || die "go install github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION failed"
  [[ $(built_version || true) == "$ACTIONLINT_VERSION" ]] || die "$bin is not actionlint $ACTIONLINT_VERSION after go install"
fi

shopt -s nullglob
workflows=("$ROOT"/.github/workflows/*.yml "$ROOT"/.github/workflows/*.yaml)
((${#workflows[@]})) || die "no workflow in .github/workflows"
if sc=$(command -v shellcheck); then
  shellcheck_note="shellcheck $("$sc" --version | awk '$1 == "version:" {print $2}')"
else
  sc=""; shellcheck_note="no shellcheck on PATH: run: scripts not checked by it"
fi
cd "$ROOT"
"$bin" -no-color -shellcheck="$sc" -pyflakes= "${workflows[@]#"$ROOT"/}"
echo "actionlint $ACTIONLINT_VERSION: ${#workflows[@]} workflow(s) clean ($shellcheck_note)"
