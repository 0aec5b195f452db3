#!/usr/bin/env bash
# One set-up step of `make demo` / `make test`, run quietly:
#
#   deploy/setup-step.sh NAME COMMAND [ARG...]
#
# prints "lensflow: NAME ..." when the step starts and "done in 12.3s" on the same line when it ends;
# everything COMMAND prints (pip's output above all) is appended to the log, LENSFLOW_SETUP_LOG (default
# .lensflow/logs/setup.log). On failure: one line on stderr with the step, its exit status, the last line
# COMMAND printed and the log's path, and this script exits with COMMAND's status (make stops there).
set -uo pipefail

[[ $# -ge 2 ]] || { echo "usage: $0 NAME COMMAND [ARG...]" >&2; exit 64; }
name="$1"; shift
log="${LENSFLOW_SETUP_LOG:-.lensflow/logs/setup.log}"
mkdir -p "$(dirname "$log")" || exit 1

now() { local t="${EPOCHREALTIME:-$(date +%s.%N)}"; echo "${t/,/.}"; }
start="$(now)"
printf '\n---- %s %s: %s\n' "$(date '+%F %T')" "$name" "$*" >>"$log"
printf 'lensflow: %s ... ' "$name"
"$@" >>"$log" 2>&1 </dev/null
rc=$?
took="$(awk -v a="$start" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')"
if [[ $rc -eq 0 ]]; then
    printf 'done in %ss\n' "$took"
    exit 0
fi
printf 'failed after %ss\n' "$took"
last="$(grep -v '^[[:space:]]*$' "$log" | tail -n 1 | cut -c1-300)"
printf 'lensflow: %s failed (exit %d): %s -- the whole log: %s\n' "$name" "$rc" "$last" "$log" >&2
exit "$rc"
