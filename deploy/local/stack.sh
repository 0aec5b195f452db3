#!/usr/bin/env bash
# lensflow local stack: Apache Kafka (KRaft, one node) + Apache Cassandra 5.0 (one node),
# run straight from Maven Central jars -- no Docker, no downloaded tarballs.
#
#   LENSFLOW_DATA_DIR=/abs/path deploy/local/stack.sh up|down|status
#
# See deploy/local/README.md for the environment variables, files and exit codes.
set -euo pipefail
shopt -u patsub_replacement 2>/dev/null || true   # bash 5.2: keep '&' literal in ${x//a/b}

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROG="lensflow"

die() {   # die CODE MESSAGE...
    local code="$1"; shift
    printf '%s: %s\n' "$PROG" "$*" >&2
    exit "$code"
}
say() { printf '%s: %s\n' "$PROG" "$*" >&2; }

usage() {
    cat >&2 <<'EOF'
usage: LENSFLOW_DATA_DIR=/abs/path stack.sh up|down|status

  up       start Kafka and Cassandra in the background (idempotent), wait until both are ready
  down     stop both (SIGTERM, then SIGKILL after LENSFLOW_STACK_STOP_TIMEOUT s; idempotent)
  status   one line per service; exit 0 when both are running, 3 otherwise
EOF
}

# ---------------------------------------------------------------------------------------------
# settings

CMD="${1:-}"
case "$CMD" in
    up|down|status) ;;
    -h|--help|help) usage; exit 0 ;;
    *) usage; exit 64 ;;
esac

DATA_DIR="${LENSFLOW_DATA_DIR:-}"
[[ -n "$DATA_DIR" ]] || die 64 "LENSFLOW_DATA_DIR must be set (absolute path for the local stack's data and logs)"
[[ "$DATA_DIR" == /* ]] || die 64 "LENSFLOW_DATA_DIR must be an absolute path (got '$DATA_DIR')"
[[ "$DATA_DIR" != *[,$'\n']* ]] || die 64 "LENSFLOW_DATA_DIR must not contain commas or newlines"
DATA_DIR="${DATA_DIR%/}"

CACHE_DIR="${LENSFLOW_CACHE_DIR:-$HOME/.cache/lensflow}"
KAFKA_PORT="${LENSFLOW_KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${LENSFLOW_KAFKA_CONTROLLER_PORT:-9093}"
CQL_PORT="${LENSFLOW_CQL_PORT:-9042}"
STORAGE_PORT="${LENSFLOW_CASSANDRA_STORAGE_PORT:-7000}"
JMX_PORT="${LENSFLOW_CASSANDRA_JMX_PORT:-}"          # empty: JMX off
START_TIMEOUT="${LENSFLOW_STACK_TIMEOUT:-300}"
STOP_TIMEOUT="${LENSFLOW_STACK_STOP_TIMEOUT:-30}"

for v in KAFKA_PORT KAFKA_CONTROLLER_PORT CQL_PORT STORAGE_PORT START_TIMEOUT STOP_TIMEOUT; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || die 64 "$v must be a number (got '${!v}')"
done
[[ -z "$JMX_PORT" || "$JMX_PORT" =~ ^[0-9]+$ ]] || die 64 "LENSFLOW_CASSANDRA_JMX_PORT must be a number"

RUN_DIR="$DATA_DIR/run"
KAFKA_DIR="$DATA_DIR/kafka"
CASS_DIR="$DATA_DIR/cassandra"
SERVICES=(kafka cassandra)

pom_prop() {   # pom_prop POM NAME -> value of <NAME>...</NAME>
    sed -n "s:.*<$2>\\([^<]*\\)</$2>.*:\\1:p" "$1" | head -n1
}
KAFKA_VERSION="$(pom_prop "$HERE/kafka/pom.xml" kafka.version)"
CASSANDRA_VERSION="$(pom_prop "$HERE/cassandra/pom.xml" cassandra.version)"

# per-service facts
svc_port()     { case "$1" in kafka) echo "$KAFKA_PORT" ;; cassandra) echo "$CQL_PORT" ;; esac; }
svc_ports()    { case "$1" in kafka) echo "$KAFKA_PORT $KAFKA_CONTROLLER_PORT" ;;
                                cassandra) echo "$CQL_PORT $STORAGE_PORT ${JMX_PORT}" ;; esac; }
svc_log()      { case "$1" in kafka) echo "$KAFKA_DIR/logs/server.log" ;;
                                cassandra) echo "$CASS_DIR/logs/system.log" ;; esac; }
svc_out()      { case "$1" in kafka) echo "$KAFKA_DIR/logs/kafka.out" ;;
                                cassandra) echo "$CASS_DIR/logs/cassandra.out" ;; esac; }
svc_ready_re() { case "$1" in kafka) echo "Kafka Server started" ;;
                                cassandra) echo "Starting listening for CQL clients" ;; esac; }
svc_version()  { case "$1" in kafka) echo "$KAFKA_VERSION" ;; cassandra) echo "$CASSANDRA_VERSION" ;; esac; }
svc_title()    { case "$1" in kafka) echo "Kafka" ;; cassandra) echo "Cassandra" ;; esac; }
svc_jars()     { echo "$CACHE_DIR/jars/$1-$(svc_version "$1")"; }
pid_file()     { echo "$RUN_DIR/$1.pid"; }
# Every JVM we start carries this property, so we can tell our processes from anything else
# (pid reuse, a second stack with another data dir).
svc_marker()   { echo "-Dlensflow.stack=$1@$DATA_DIR"; }

# ---------------------------------------------------------------------------------------------
# processes and ports

is_ours() {   # is_ours SVC PID: PID is alive and is this stack's SVC process
    local pid="$2"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    grep -qzxF -- "$(svc_marker "$1")" "/proc/$pid/cmdline" 2>/dev/null
}

find_pid() {   # find_pid SVC -> prints the pid of our running SVC process, or nothing
    local svc="$1" pf pid
    pf="$(pid_file "$svc")"
    if [[ -f "$pf" ]]; then
        pid="$(tr -dc '0-9' <"$pf" 2>/dev/null || true)"
        if is_ours "$svc" "$pid"; then echo "$pid"; return 0; fi
    fi
    # pid file missing or stale: look for the process by its marker. The regex starts with
    # "[-]" so that grep's own command line (which holds the regex) never matches it.
    local re f
    re="$(svc_marker "$svc" | sed -e 's/[].$*^[\\]/\\&/g' -e 's/^-/[-]/')"
    while IFS= read -r f; do
        pid="${f#/proc/}"; pid="${pid%/cmdline}"
        if is_ours "$svc" "$pid"; then echo "$pid"; return 0; fi
    done < <(grep -lzx -- "$re" /proc/[0-9]*/cmdline 2>/dev/null || true)
    return 0
}

sync_pid_file() {   # sync_pid_file SVC -> prints pid (maybe empty); fixes/removes the pid file
    local svc="$1" pf pid
    pf="$(pid_file "$svc")"
    pid="$(find_pid "$svc")"
    if [[ -n "$pid" ]]; then
        if [[ "$(cat "$pf" 2>/dev/null || true)" != "$pid" ]] && [[ -d "$RUN_DIR" ]]; then
            echo "$pid" >"$pf"
        fi
    elif [[ -f "$pf" ]]; then
        [[ "$CMD" == status ]] || say "removing stale pid file $pf (pid $(tr -dc '0-9' <"$pf" || true) is not a running lensflow $svc)"
        [[ "$CMD" == status ]] || rm -f "$pf"
    fi
    echo "$pid"
}

now_ms() { local t="${EPOCHREALTIME:-$(date +%s.%N)}"; t="${t/,/.}"; echo $(( ${t%.*} * 1000 + 10#$(printf '%.3s' "${t#*.}000") )); }

port_open() {   # port_open PORT: something accepts TCP connections on 127.0.0.1:PORT
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

port_owner() {   # port_owner PORT -> "java (pid 123)" when ss can tell
    command -v ss >/dev/null 2>&1 || return 0
    ss -Hltnp "sport = :$1" 2>/dev/null | grep -o 'users:(([^)]*' | head -n1 \
        | sed -E 's/users:\(\("([^"]*)",pid=([0-9]+).*/\1 (pid \2)/' || true
}

log_tail() {   # log_tail SVC [with-out]: last 20 lines (cut to 300 chars) of the service log,
              # plus of its stdout/stderr file (JVM errors land there) when asked or no log yet
    local svc="$1" log out
    log="$(svc_log "$svc")"; out="$(svc_out "$svc")"
    if [[ -s "$log" ]]; then
        echo "---- last 20 lines of $log ----" >&2
        tail -n 20 "$log" | cut -c1-300 >&2
    fi
    if [[ -s "$out" ]] && [[ "${2:-}" == with-out || ! -s "$log" ]]; then
        echo "---- last 20 lines of $out ----" >&2
        tail -n 20 "$out" | cut -c1-300 >&2
    fi
    return 0
}

# ---------------------------------------------------------------------------------------------
# prerequisites

JAVA=""
check_java() {
    if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
        JAVA="$JAVA_HOME/bin/java"
    elif command -v java >/dev/null 2>&1; then
        JAVA="$(command -v java)"
    else
        die 2 "Java 17+ is required to run the local stack (java not found on PATH)"
    fi
    local line major
    line="$("$JAVA" -version 2>&1 | grep -m1 -Eo 'version "[^"]+"' || true)"
    major="${line#version \"}"; major="${major%\"}"
    [[ "$major" == 1.* ]] && major="${major#1.}"
    major="${major%%[!0-9]*}"
    if [[ -z "$major" ]]; then
        die 2 "Java 17+ is required to run the local stack (could not read the version of $JAVA)"
    fi
    if (( major < 17 )); then
        die 2 "Java 17+ is required to run the local stack (found Java $major at $JAVA)"
    fi
    JAVA_MAJOR="$major"
    if (( major > 17 )); then
        say "warning: Java $major found; Cassandra $CASSANDRA_VERSION supports Java 11 and 17 only"
    fi
}

check_mvn() {
    command -v mvn >/dev/null 2>&1 \
        || die 2 "Maven is required to fetch the local stack's jars on first use (mvn not found on PATH)"
}

# resolve SVC: make sure $CACHE_DIR/jars/SVC-VERSION holds the complete runtime classpath
resolve() {
    local svc="$1" ver dir pom sum marker tmp rlog
    ver="$(svc_version "$svc")"
    dir="$(svc_jars "$svc")"
    pom="$HERE/$svc/pom.xml"
    sum="$(sha256sum "$pom" | cut -d' ' -f1)"
    marker="$dir/.lensflow-complete"
    if [[ -f "$marker" && "$(cat "$marker")" == "$sum" ]]; then
        return 0
    fi
    check_mvn
    say "resolving $(svc_title "$svc") $ver jars from Maven Central into $dir (first run only)..."
    mkdir -p "$CACHE_DIR/jars"
    tmp="$(mktemp -d "$CACHE_DIR/jars/.$svc-$ver.XXXXXX")"
    rlog="$CACHE_DIR/jars/$svc-$ver.resolve.log"
    if ! mvn -B -q -f "$pom" dependency:copy-dependencies -DincludeScope=runtime \
            -DoutputDirectory="$tmp" >"$rlog" 2>&1; then
        rm -rf "$tmp"
        tail -n 20 "$rlog" >&2 || true
        die 1 "resolving $(svc_title "$svc") $ver jars with Maven failed; see $rlog"
    fi
    if ! compgen -G "$tmp/*.jar" >/dev/null; then
        rm -rf "$tmp"
        die 1 "resolving $(svc_title "$svc") $ver jars produced no jars; see $rlog"
    fi
    echo "$sum" >"$tmp/.lensflow-complete"
    rm -rf "$dir"
    mv "$tmp" "$dir"
}

# ---------------------------------------------------------------------------------------------
# config generation

render() {   # render TEMPLATE OUT KEY=VALUE...
    local tpl="$1" out="$2" text kv
    shift 2
    text="$(<"$tpl")"
    for kv in "$@"; do
        text="${text//@${kv%%=*}@/"${kv#*=}"}"
    done
    if [[ "$text" == *@[A-Z_]*@* ]] && grep -qE '@[A-Z_]+@' <<<"$text"; then
        die 1 "internal error: unreplaced placeholder in $out: $(grep -oE '@[A-Z_]+@' <<<"$text" | head -n1)"
    fi
    printf '%s\n' "$text" >"$out.tmp"
    mv "$out.tmp" "$out"
}

jvm_opts() {   # jvm_opts FILE -> one option per line; comments/blank lines dropped and
               # "--add-opens X" style lines joined to "--add-opens=X" (one argv element)
    sed -E -e 's/[[:space:]]*#.*$//' -e 's/^[[:space:]]+//' -e 's/[[:space:]]+$//' -e '/^$/d' \
        -e 's/^(--[a-z-]+)[[:space:]]+/\1=/' "$1"
}

# ---------------------------------------------------------------------------------------------
# launching

# log size before each launch; is_ready looks for the readiness line after it (via ${!var})
# shellcheck disable=SC2034
LOG_OFFSET_kafka=0 LOG_OFFSET_cassandra=0

launch() {   # launch SVC CMD...: start CMD detached; stdout/stderr to the service's .out file
    local svc="$1" out pid log size
    shift
    out="$(svc_out "$svc")"
    log="$(svc_log "$svc")"
    size=0
    [[ -f "$log" ]] && size="$(stat -c %s "$log")"
    printf -v "LOG_OFFSET_$svc" '%s' "$size"
    {
        echo "==== $(date -Is) starting $svc"
        printf '%q ' "$@"; echo
    } >"$out"
    # setsid: own session, no controlling terminal; fd 9 (the stack lock) is not inherited.
    setsid nohup "$@" </dev/null >>"$out" 2>&1 9>&- &
    pid=$!
    echo "$pid" >"$(pid_file "$svc")"
    say "started $(svc_title "$svc") $(svc_version "$svc") (pid $pid, log $log)"
}

check_ports_free() {   # check_ports_free SVC: error if a foreign process holds one of SVC's ports
    local svc="$1" p owner
    for p in $(svc_ports "$svc"); do
        if port_open "$p"; then
            owner="$(port_owner "$p")"
            die 1 "cannot start $(svc_title "$svc"): port $p on 127.0.0.1 is already in use${owner:+ by $owner} (not by this stack; stop it or set the LENSFLOW_*_PORT variables)"
        fi
    done
}

start_kafka() {
    local jars="$1"
    mkdir -p "$KAFKA_DIR/data" "$KAFKA_DIR/logs"
    render "$HERE/kafka/server.properties.in" "$KAFKA_DIR/server.properties" \
        KAFKA_PORT="$KAFKA_PORT" CONTROLLER_PORT="$KAFKA_CONTROLLER_PORT" DATA_DIR="$KAFKA_DIR/data"
    local common=(-cp "$jars/*" "-Dlog4j2.configurationFile=$HERE/kafka/log4j2.xml"
                  "-Dkafka.logs.dir=$KAFKA_DIR/logs")
    if [[ ! -f "$KAFKA_DIR/data/meta.properties" ]]; then
        local cid=""
        [[ -s "$KAFKA_DIR/cluster.id" ]] && cid="$(<"$KAFKA_DIR/cluster.id")"
        # 16 random bytes, URL-safe base64 without padding, like StorageTool random-uuid -- which
        # (like Kafka's Uuid.randomUuid) never starts with '-': the CLI would read it as an option.
        while [[ ! "$cid" =~ ^[A-Za-z0-9_][A-Za-z0-9_-]{21}$ ]]; do
            cid="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
        done
        echo "$cid" >"$KAFKA_DIR/cluster.id"
        say "formatting Kafka storage in $KAFKA_DIR/data (cluster id $cid)"
        if ! "$JAVA" -Xmx256m -XX:TieredStopAtLevel=1 "${common[@]}" kafka.tools.StorageTool format \
                "--cluster-id=$cid" "--config=$KAFKA_DIR/server.properties" --ignore-formatted \
                >"$KAFKA_DIR/logs/format.out" 2>&1 9>&-; then
            cat "$KAFKA_DIR/logs/format.out" >&2
            die 1 "formatting Kafka storage failed; see $KAFKA_DIR/logs/format.out"
        fi
    fi
    local opts
    mapfile -t opts < <(jvm_opts "$HERE/kafka/jvm.options")
    launch kafka "$JAVA" "${opts[@]}" "$(svc_marker kafka)" "${common[@]}" \
        kafka.Kafka "$KAFKA_DIR/server.properties"
}

start_cassandra() {
    local jars="$1" d
    for d in data commitlog saved_caches hints cdc_raw logs; do mkdir -p "$CASS_DIR/$d"; done
    render "$HERE/cassandra/cassandra.yaml.in" "$CASS_DIR/cassandra.yaml" \
        CASSANDRA_DIR="$CASS_DIR" CQL_PORT="$CQL_PORT" STORAGE_PORT="$STORAGE_PORT"
    local jamm
    jamm="$(compgen -G "$jars/jamm-*.jar" | head -n1 || true)"
    [[ -n "$jamm" ]] || die 1 "jamm jar missing from $jars (delete that folder to re-resolve)"
    local opts extra=()
    mapfile -t opts < <(jvm_opts "$HERE/cassandra/jvm.options")
    if [[ -n "$JMX_PORT" ]]; then
        extra+=("-Dcassandra.jmx.local.port=$JMX_PORT")
    fi
    if (( JAVA_MAJOR >= 18 )); then
        extra+=("-Djava.security.manager=allow")
    fi
    local url="file://${CASS_DIR// /%20}/cassandra.yaml"
    launch cassandra "$JAVA" "${opts[@]}" "${extra[@]}" "$(svc_marker cassandra)" \
        "-javaagent:$jamm" \
        "-Dcassandra.config=$url" \
        "-Dcassandra.storagedir=$CASS_DIR" \
        "-Dcassandra.logdir=$CASS_DIR/logs" \
        "-Dlogback.configurationFile=$HERE/cassandra/logback.xml" \
        "-Dcassandra-foreground=yes" \
        -cp "$jars/*" org.apache.cassandra.service.CassandraDaemon
}

is_ready() {   # is_ready SVC PID: port answers and the readiness line is in the log
    local svc="$1" log off var
    port_open "$(svc_port "$svc")" || return 1
    log="$(svc_log "$svc")"
    [[ -f "$log" ]] || return 1
    var="LOG_OFFSET_$svc"; off="${!var}"
    (( $(stat -c %s "$log") >= off )) || off=0   # rolled over meanwhile
    grep -qF -- "$(svc_ready_re "$svc")" < <(tail -c "+$((off + 1))" "$log")
}

# ---------------------------------------------------------------------------------------------
# subcommands

lock() {
    mkdir -p "$RUN_DIR"
    exec 9>"$RUN_DIR/stack.lock"
    flock -w 600 9 || die 1 "another stack.sh is still running on $DATA_DIR (lock $RUN_DIR/stack.lock)"
}

cmd_up() {
    check_java
    lock
    local svc pid todo=() waiting=() already=()
    declare -A PID T0
    for svc in "${SERVICES[@]}"; do
        pid="$(sync_pid_file "$svc")"
        if [[ -n "$pid" ]]; then
            PID[$svc]="$pid"
            if port_open "$(svc_port "$svc")"; then
                already+=("$svc")
            else
                say "$(svc_title "$svc") is already starting (pid $pid); waiting for it"
                waiting+=("$svc")
            fi
        else
            todo+=("$svc")
        fi
    done
    if (( ${#todo[@]} == 0 && ${#waiting[@]} == 0 )); then
        say "local stack already running (kafka pid ${PID[kafka]}, cassandra pid ${PID[cassandra]}); nothing to do"
        return 0
    fi
    for svc in "${already[@]}"; do
        say "$(svc_title "$svc") already running (pid ${PID[$svc]})"
    done
    for svc in "${todo[@]}"; do check_ports_free "$svc"; done

    # Cassandra first: it is the slow one; Kafka's jars resolve and its storage formats meanwhile.
    local order=()
    for svc in cassandra kafka; do
        [[ " ${todo[*]} " == *" $svc "* ]] && order+=("$svc")
    done
    for svc in "${order[@]}"; do
        resolve "$svc"
        T0[$svc]="$(now_ms)"
        "start_$svc" "$(svc_jars "$svc")"
        PID[$svc]="$(<"$(pid_file "$svc")")"
        waiting+=("$svc")
    done

    local names=() s
    for s in "${waiting[@]}"; do names+=("$(svc_title "$s")"); done
    s="${names[*]}"
    # Launches are done: let other stack.sh calls in (a second `up` waits too, `down` may stop us).
    flock -u 9; exec 9>&-
    say "waiting for ${s// / and } to be ready (timeout ${START_TIMEOUT}s)..."
    local deadline=$((SECONDS + START_TIMEOUT)) pending=("${waiting[@]}") still
    for svc in "${waiting[@]}"; do [[ -n "${T0[$svc]:-}" ]] || T0[$svc]="$(now_ms)"; done
    while (( ${#pending[@]} > 0 )); do
        still=()
        for svc in "${pending[@]}"; do
            if ! kill -0 "${PID[$svc]}" 2>/dev/null; then
                rm -f "$(pid_file "$svc")"
                log_tail "$svc" with-out
                die 1 "$(svc_title "$svc") exited during startup; see $(svc_log "$svc") (and $(svc_out "$svc"))"
            elif is_ready "$svc"; then
                local ms=$(( $(now_ms) - T0[$svc] ))
                say "$(svc_title "$svc") ready on 127.0.0.1:$(svc_port "$svc") after $((ms / 1000)).$(( ms % 1000 / 100 ))s (pid ${PID[$svc]})"
            else
                still+=("$svc")
            fi
        done
        pending=("${still[@]+"${still[@]}"}")
        (( ${#pending[@]} > 0 )) || break
        if (( SECONDS >= deadline )); then
            local what=()
            for svc in "${pending[@]}"; do
                log_tail "$svc"
                what+=("$(svc_title "$svc") (log $(svc_log "$svc"))")
            done
            local joined
            joined="$(printf '%s and ' "${what[@]}")"
            die 1 "timed out after ${START_TIMEOUT}s waiting for ${joined% and } to start; left running, 'stack.sh down' stops it"
        fi
        sleep 1
    done
    say "local stack up: Kafka 127.0.0.1:$KAFKA_PORT, Cassandra CQL 127.0.0.1:$CQL_PORT (data in $DATA_DIR)"
}

cmd_down() {
    if [[ ! -d "$DATA_DIR" ]]; then
        say "local stack not running (no $DATA_DIR)"
        return 0
    fi
    lock
    local svc pid stopping=() still
    declare -A PID
    for svc in "${SERVICES[@]}"; do
        pid="$(sync_pid_file "$svc")"
        if [[ -n "$pid" ]]; then
            say "stopping $(svc_title "$svc") (pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
            PID[$svc]="$pid"
            stopping+=("$svc")
        else
            say "$(svc_title "$svc") not running"
            rm -f "$(pid_file "$svc")"
        fi
    done
    local deadline=$((SECONDS + STOP_TIMEOUT))
    while (( ${#stopping[@]} > 0 )); do
        still=()
        for svc in "${stopping[@]}"; do
            if kill -0 "${PID[$svc]}" 2>/dev/null; then
                still+=("$svc")
            else
                rm -f "$(pid_file "$svc")"
                say "$(svc_title "$svc") stopped"
            fi
        done
        stopping=("${still[@]+"${still[@]}"}")
        (( ${#stopping[@]} > 0 )) || break
        if (( SECONDS >= deadline )); then
            for svc in "${stopping[@]}"; do
                say "$(svc_title "$svc") (pid ${PID[$svc]}) still running after ${STOP_TIMEOUT}s; sending SIGKILL"
                kill -KILL "${PID[$svc]}" 2>/dev/null || true
            done
            sleep 1
            for svc in "${stopping[@]}"; do rm -f "$(pid_file "$svc")"; done
            break
        fi
        sleep 0.5
    done
}

cmd_status() {
    local svc pid state rc=0
    for svc in "${SERVICES[@]}"; do
        pid="$(sync_pid_file "$svc")"
        if [[ -z "$pid" ]]; then
            state=stopped
        elif port_open "$(svc_port "$svc")"; then
            state=running
        else
            state=starting
        fi
        [[ "$state" == running ]] || rc=3
        printf '%-9s %-8s pid=%-7s port=%-5s log=%s\n' \
            "$svc" "$state" "${pid:--}" "$(svc_port "$svc")" "$(svc_log "$svc")"
    done
    return "$rc"
}

case "$CMD" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
esac
