#!/usr/bin/env bash
# The warm no-op through the gateway on its own, A/B: `jbazel build //bench:noop` in tunnel mode with a baseline build
# (BASE, another artifacts dir) and with this tree's build, each with its own orchestrator, gateway and agent,
# interleaved with local bazel (as a user types it); then the median of each jbazel phase (RBS_PHASE_TRACE marks) per
# build. Not a test; never asserts times.
# Usage: bash bench/noop.sh BASE_ARTIFACTS_DIR   (RBS_NOOP_RUNS, default 20: interleaved runs per command)
source "$(dirname "${BASH_SOURCE[0]}")/../e2e/lib.sh"
BENCH_DIR="$REPO_ROOT/bench"
BASE="$(cd "${1:?usage: bench/noop.sh BASE_ARTIFACTS_DIR}" && pwd)"
RUNS="${RBS_NOOP_RUNS:-20}"
source "$BENCH_DIR/lib.sh"
install_bench_tools
machine_state
build_artifacts
bench_tool

E2E_TMP="$(mktemp -d /tmp/rbs-noop.XXXXXX)"
for w in local a b; do bench_workspace "$E2E_TMP/ws-$w"; done
CLEANUP_CMDS+=("cd '$E2E_TMP/ws-local' && bazel shutdown")
TARGET="//bench:noop"
head -c 32 /dev/urandom | base64 >"$E2E_TMP/token.key"
chmod 600 "$E2E_TMP/token.key"

# One orchestrator and one gateway per build; tunnel-mode agents have their own synced copy of the workspace.
declare -A JB
start_build_stack() {
    local name="$1" artifacts="$2" state="$E2E_TMP/state-$1" public agent
    public="$(free_port)"; agent="$(free_port)"
    start_build_orchestrator "$name" "$artifacts" \
        --gateway-public-address "http://127.0.0.1:$public" --gateway-agent-address "http://127.0.0.1:$agent" \
        --token-key-file "$E2E_TMP/token.key" || return 1
    "$artifacts/rbs-gateway/rbs-gateway" --public-listen "127.0.0.1:$public" --agent-listen "127.0.0.1:$agent" \
        --orchestrator "${BUILD_ORCHESTRATOR[$name]}" --token-key-file "$E2E_TMP/token.key" --ready-file "$state/gateway.json" \
        >>"$E2E_TMP/gateway-$name.log" 2>&1 &
    CLEANUP_PIDS+=("$!")
    wait_ready_file "$state/gateway.json" publicAddress "$!" >/dev/null || return 1
    JB[$name]="$artifacts/jbazel/jbazel --rbs_connect=tunnel --rbs_orchestrator=http://127.0.0.1:$public"
    CLEANUP_CMDS+=("cd '$E2E_TMP/ws-$name' && ${JB[$name]} shutdown")
}
start_build_stack a "$BASE"
start_build_stack b "$RBS_ARTIFACTS"
# After each stack's `jbazel shutdown` (which stops its agent's bazel server): a cleanup command run later would ask
# the orchestrator for a new agent.
CLEANUP_CMDS+=("kill_build_agents")

(cd "$E2E_TMP/ws-local" && bazel build "$TARGET" >/dev/null 2>&1)
for b in a b; do (cd "$E2E_TMP/ws-$b" && ${JB[$b]} build "$TARGET" >/dev/null 2>&1); done

log "warm no-op via the gateway, $RUNS interleaved runs each (load $(cut -d' ' -f1-3 /proc/loadavg))"
# 10 unmeasured rounds first: a bazel server's JVM takes ~10 builds to warm up (bench/README.md third round).
out="$(interleave noop "$RUNS" 10 \
    "local=cd $E2E_TMP/ws-local && bazel build $TARGET" \
    "base=cd $E2E_TMP/ws-a && RBS_PHASE_TRACE=$E2E_TMP/marks-a ${JB[a]} build $TARGET" \
    "new=cd $E2E_TMP/ws-b && RBS_PHASE_TRACE=$E2E_TMP/marks-b ${JB[b]} build $TARGET")"
echo "$out"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
m() { field "$out" "$1" median; }
awk -v l="$(m local)" -v b="$(m base)" -v n="$(m new)" 'BEGIN {
    printf "median ms: local %.1f  base %.1f  new %.1f | vs local: base %.2fx  new %.2fx\n", l * 1000, b * 1000, n * 1000, b / l, n / l }'

# Phases per build from the marks (each run appends main, getserver, getserver-done, execute, execute-done, exit).
for b in a b; do
    awk -v build="$b" '
        $1 == "main" { if (n) flush(); n++ } { t[$1] = $2 }
        function flush() { sg[n] = (t["getserver"] - t["main"]) / 1000; gs[n] = (t["getserver-done"] - t["getserver"]) / 1000
            sy[n] = (t["execute"] - t["getserver-done"]) / 1000; ex[n] = (t["execute-done"] - t["execute"]) / 1000
            xt[n] = (t["exit"] - t["execute-done"]) / 1000 }
        function median(a, k, i, j, s) { for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (a[j] < a[i]) { s = a[i]; a[i] = a[j]; a[j] = s }
            return (k % 2) ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2 }
        END { flush(); printf "%s (%d runs, median ms): settings+workspace %.1f | allocation %.1f | sync step %.1f | start to exit frame %.1f | exit %.1f\n",
            build == "a" ? "base" : "new", n, median(sg, n), median(gs, n), median(sy, n), median(ex, n), median(xt, n) }' "$E2E_TMP/marks-$b"
done
