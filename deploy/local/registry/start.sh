#!/usr/bin/env bash
# lensflow local schema registry: Apicurio Registry (Confluent-compatible API under
# /apis/ccompat/v7), in-memory storage, run from the prebuilt application zip that Apicurio
# publishes on Maven Central -- no Docker, no build.
#
#   deploy/local/registry/start.sh [start]   fetch (first run only), start, wait; prints the PID
#   deploy/local/registry/start.sh stop      stop it (idempotent)
#   deploy/local/registry/start.sh status    print the PID and exit 0 if running, else exit 3
#
# See deploy/local/registry/README.md for the environment variables.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
PROG="lensflow-registry"

die() {   # die CODE MESSAGE...  (one line on stderr)
    local code="$1"; shift
    printf '%s: %s\n' "$PROG" "$*" >&2
    exit "$code"
}
say() { printf '%s: %s\n' "$PROG" "$*" >&2; }

# pinned artifact: io.apicurio:apicurio-registry-app:<version>:zip:all (runner jar + lib/)
APICURIO_VERSION="3.0.9"
APICURIO_SHA256="8fc13160eaaafeec930a9a93b7e82da1ee8caef3eae29c9ce4b403d80a1523ea"

CMD="${1:-start}"
case "$CMD" in
    start|stop|status) ;;
    -h|--help|help) sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 0 ;;
    *) die 64 "unknown command '$CMD' (start|stop|status)" ;;
esac

PORT="${LENSFLOW_REGISTRY_PORT:-18081}"
START_TIMEOUT="${LENSFLOW_REGISTRY_TIMEOUT:-180}"
HEAP="${LENSFLOW_REGISTRY_HEAP:-512m}"
CENTRAL="${LENSFLOW_MAVEN_CENTRAL:-https://repo.maven.apache.org/maven2}"
CACHE_DIR="${LENSFLOW_CACHE_DIR:-$HOME/.cache/lensflow}"
DATA_DIR="${LENSFLOW_DATA_DIR:-$ROOT/.lensflow}"
[[ "$PORT" =~ ^[0-9]+$ ]] || die 64 "LENSFLOW_REGISTRY_PORT must be a number (got '$PORT')"
[[ "$START_TIMEOUT" =~ ^[0-9]+$ ]] || die 64 "LENSFLOW_REGISTRY_TIMEOUT must be a number (got '$START_TIMEOUT')"
[[ "$DATA_DIR" == /* ]] || die 64 "LENSFLOW_DATA_DIR must be an absolute path (got '$DATA_DIR')"

APP_DIR="$CACHE_DIR/registry/apicurio-registry-app-$APICURIO_VERSION"
RUNNER="apicurio-registry-app-$APICURIO_VERSION-runner.jar"
RUN_DIR="$DATA_DIR/registry"
PID_FILE="$RUN_DIR/registry-$PORT.pid"
LOG="$RUN_DIR/registry-$PORT.log"
URL="http://127.0.0.1:$PORT/apis/ccompat/v7"

command -v curl >/dev/null 2>&1 || die 2 "curl is required (not found on PATH)"

# ---------------------------------------------------------------------------------------------

our_pid() {   # print the PID of our running registry on $PORT, or fail
    local pid
    [[ -f "$PID_FILE" ]] || return 1
    pid="$(<"$PID_FILE")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    # guard against a recycled PID: it must still be our runner jar
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$RUNNER" || return 1
    echo "$pid"
}

answers() { curl -sf -m 5 -o /dev/null "$URL/subjects"; }

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

# make sure $APP_DIR holds the unpacked application (download + sha256 check on first use only)
fetch() {
    local marker="$APP_DIR/.lensflow-complete" tmp zip url
    if [[ -f "$marker" && "$(<"$marker")" == "$APICURIO_SHA256" && -f "$APP_DIR/$RUNNER" ]]; then
        return 0
    fi
    url="$CENTRAL/io/apicurio/apicurio-registry-app/$APICURIO_VERSION/apicurio-registry-app-$APICURIO_VERSION-all.zip"
    say "fetching Apicurio Registry $APICURIO_VERSION (~110 MB) from Maven Central into $APP_DIR (first run only)..."
    mkdir -p "$CACHE_DIR/registry"
    tmp="$(mktemp -d "$CACHE_DIR/registry/.apicurio-$APICURIO_VERSION.XXXXXX")"
    zip="$tmp/app.zip"
    if ! curl -fsSL --retry 3 --connect-timeout 20 -o "$zip" "$url" 2>"$tmp/curl.err"; then
        local err; err="$(tail -n1 "$tmp/curl.err")"; rm -rf "$tmp"
        die 1 "downloading $url failed: $err"
    fi
    if [[ "$(sha256sum "$zip" | cut -d' ' -f1)" != "$APICURIO_SHA256" ]]; then
        rm -rf "$tmp"
        die 1 "sha256 mismatch for $url (expected $APICURIO_SHA256)"
    fi
    if command -v unzip >/dev/null 2>&1; then
        unzip -q "$zip" -d "$tmp/app" || { rm -rf "$tmp"; die 1 "unpacking $zip failed"; }
    else
        python3 -m zipfile -e "$zip" "$tmp/app" || { rm -rf "$tmp"; die 1 "unpacking $zip failed (no unzip; python3 zipfile failed)"; }
    fi
    [[ -f "$tmp/app/$RUNNER" ]] || { rm -rf "$tmp"; die 1 "$RUNNER not found in the downloaded zip"; }
    echo "$APICURIO_SHA256" >"$tmp/app/.lensflow-complete"
    rm -rf "$APP_DIR"
    mv "$tmp/app" "$APP_DIR"
    rm -rf "$tmp"
}

JAVA="java"
[[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]] && JAVA="$JAVA_HOME/bin/java"

check_java() {
    command -v "$JAVA" >/dev/null 2>&1 || die 2 "Java 17+ is required (java not found on PATH or in \$JAVA_HOME)"
    local ver major
    ver="$("$JAVA" -version 2>&1 | sed -n 's/.*version "\([^"]*\)".*/\1/p' | head -n1)"
    major="${ver%%.*}"
    [[ "$major" == 1 ]] && major="$(cut -d. -f2 <<<"$ver")"
    [[ "$major" =~ ^[0-9]+$ && "$major" -ge 17 ]] || die 2 "Java 17+ is required (found '${ver:-unknown}')"
}

start() {
    local pid t0 code
    if pid="$(our_pid)"; then
        answers || die 1 "registry PID $pid is running but $URL does not answer; see $LOG"
        echo "$pid"
        return 0
    fi
    port_in_use && die 1 "port $PORT on 127.0.0.1 is already in use by another process"
    check_java
    fetch
    mkdir -p "$RUN_DIR"
    : >"$LOG"
    # the application's own defaults (in the jar): apicurio.storage.kind=sql on in-memory H2 -- data
    # lives as long as the process. Only the listener is changed here.
    local setsid=()
    command -v setsid >/dev/null 2>&1 && setsid=(setsid)   # own session: not killed with the caller's group
    (cd "$APP_DIR" && exec "${setsid[@]}" "$JAVA" -Xms64m "-Xmx$HEAP" \
        -Dquarkus.http.host=127.0.0.1 "-Dquarkus.http.port=$PORT" \
        -Dquarkus.log.console.color=false \
        -jar "$APP_DIR/$RUNNER" >>"$LOG" 2>&1 </dev/null) &
    pid=$!
    echo "$pid" >"$PID_FILE"
    t0=$SECONDS
    until answers; do
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid" 2>/dev/null && code=0 || code=$?
            rm -f "$PID_FILE"
            die 1 "registry exited during startup (exit $code); see $LOG"
        fi
        if (( SECONDS - t0 >= START_TIMEOUT )); then
            stop_pid "$pid"
            die 1 "registry did not answer on $URL within ${START_TIMEOUT}s; see $LOG"
        fi
        sleep 0.5
    done
    say "Apicurio Registry $APICURIO_VERSION ready on $URL in $((SECONDS - t0))s (log: $LOG)"
    echo "$pid"
}

stop_pid() {   # stop_pid PID: SIGTERM, then SIGKILL after 30 s
    local pid="$1" i
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 60; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    rm -f "$PID_FILE"
}

case "$CMD" in
    start) start ;;
    stop)
        if pid="$(our_pid)"; then
            stop_pid "$pid"
            say "stopped registry PID $pid"
        else
            rm -f "$PID_FILE"
        fi
        ;;
    status)
        if pid="$(our_pid)" && answers; then echo "$pid"; else exit 3; fi
        ;;
esac
