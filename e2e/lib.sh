# Shared helpers for the e2e scripts. Source it; it sets strict mode and a cleanup trap.
#   RBS_ARTIFACTS  where the published binaries live (default: <repo>/artifacts); built when missing
#   RBS_E2E_KEEP=1 keep the temp dir for inspection
set -euo pipefail

E2E_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$E2E_DIR/.." && pwd)"
RBS_ARTIFACTS="${RBS_ARTIFACTS:-$REPO_ROOT/artifacts}"
CHECKS_PASSED=0
CHECKS_FAILED=0
declare -a CLEANUP_PIDS=()
declare -a CLEANUP_CMDS=()

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

pass() { CHECKS_PASSED=$((CHECKS_PASSED + 1)); printf 'CHECK PASS: %s\n' "$*"; }
fail() { CHECKS_FAILED=$((CHECKS_FAILED + 1)); printf 'CHECK FAIL: %s\n' "$*"; }
# check "description" command...: runs the command, records pass/fail, never exits.
check() {
    local what="$1"; shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}

# Publishes the executables once (framework-dependent; jbazel as Native AOT) into $RBS_ARTIFACTS.
build_artifacts() {
    if [ -x "$RBS_ARTIFACTS/rbs-orchestrator/rbs-orchestrator" ] && [ -x "$RBS_ARTIFACTS/rbs-agent/rbs-agent" ] \
        && [ -x "$RBS_ARTIFACTS/jbazel/jbazel" ] && [ -x "$RBS_ARTIFACTS/rbs-gateway/rbs-gateway" ] \
        && [ "${RBS_REBUILD:-0}" != 1 ]; then
        return 0
    fi
    log "publishing RBS into $RBS_ARTIFACTS (first run takes a minute or two)"
    local p
    for p in Orchestrator:rbs-orchestrator Agent:rbs-agent Gateway:rbs-gateway; do
        dotnet publish "$REPO_ROOT/${p%%:*}/${p%%:*}.csproj" -c Release -o "$RBS_ARTIFACTS/${p##*:}" -p:UseAppHost=true \
            -nologo -v quiet >&2
    done
    dotnet publish "$REPO_ROOT/JBazel/JBazel.csproj" -c Release -r linux-x64 -o "$RBS_ARTIFACTS/jbazel" -nologo -v quiet >&2
}

JBAZEL() { "$RBS_ARTIFACTS/jbazel/jbazel" "$@"; }

# Runs on exit: kills what the script started, then the temp dir.
e2e_cleanup() {
    local rc=$?
    set +e
    local c
    for c in "${CLEANUP_CMDS[@]}"; do eval "$c" >/dev/null 2>&1; done
    local pid
    for pid in "${CLEANUP_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for pid in "${CLEANUP_PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null
    done
    if [ -n "${E2E_TMP:-}" ] && [ "${RBS_E2E_KEEP:-0}" != 1 ]; then rm -rf "$E2E_TMP"; fi
    exit "$rc"
}
trap e2e_cleanup EXIT
trap 'exit 130' INT TERM

# Waits until a JSON ready file exists and prints one field of it.
wait_ready_file() {
    local file="$1" field="$2" pid="${3:-}" tries=600
    while [ ! -s "$file" ]; do
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
            log "process $pid exited before writing $file"; return 1
        fi
        tries=$((tries - 1)); [ "$tries" -gt 0 ] || { log "timed out waiting for $file"; return 1; }
        sleep 0.1
    done
    jq -r ".$field" "$file"
}

# Starts rbs-orchestrator --local-mode on an ephemeral port; sets ORCH_PID and RBS_ORCHESTRATOR.
# Extra arguments go to the orchestrator.
start_orchestrator() {
    local state="$E2E_TMP/state"
    mkdir -p "$state"
    rm -f "$state/orchestrator.json"
    "$RBS_ARTIFACTS/rbs-orchestrator/rbs-orchestrator" --local-mode --port 0 \
        --state-path "$state/orchestrator.db" --ready-file "$state/orchestrator.json" \
        --agent-path "$RBS_ARTIFACTS/rbs-agent/rbs-agent" "$@" >>"$E2E_TMP/orchestrator.log" 2>&1 &
    ORCH_PID=$!
    CLEANUP_PIDS+=("$ORCH_PID")
    RBS_ORCHESTRATOR="$(wait_ready_file "$state/orchestrator.json" address "$ORCH_PID")"
    export RBS_ORCHESTRATOR
    log "orchestrator pid $ORCH_PID at $RBS_ORCHESTRATOR"
}

stop_orchestrator() {
    kill -TERM "$ORCH_PID" 2>/dev/null || true
    wait "$ORCH_PID" 2>/dev/null || true
}

# Agents this run started (their ready files carry the pids), in every state dir of the run
# ($E2E_TMP/state, and $E2E_TMP/state-* of extra orchestrators, e.g. replicas on one database).
agent_pids() {
    local f
    for f in "$E2E_TMP"/state/agents/*.json "$E2E_TMP"/state-*/agents/*.json; do
        [ -e "$f" ] && jq -r .pid "$f"
    done
    return 0
}

# Kills every agent the orchestrator of this run spawned (after shutting their bazel servers down).
kill_agents() {
    local pid
    for pid in $(agent_pids); do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in $(agent_pids); do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
}

# Processes whose command line mentions this run's temp dir (agents, bazel servers of copied workspaces).
leftover_processes() { pgrep -af -- "$E2E_TMP" | grep -v -- "pgrep" || true; }

# Prints the summary line and exits non-zero on any failed check.
finish() {
    printf '%s: %d passed, %d failed\n' "$(basename "$0" .sh)" "$CHECKS_PASSED" "$CHECKS_FAILED"
    [ "$CHECKS_FAILED" -eq 0 ]
}
