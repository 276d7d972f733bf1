#!/usr/bin/env bash
# Where a first sync's time goes (bench/README.md, "Workspace sync"): generates bench/sync.sh's tree, starts a local stack,
# then runs RBS_BREAKDOWN_RUNS first syncs (empty agent workspace, cold digest cache) and prints for each jbazel's
# wall time, status line and phase marks, the CPU-seconds (user + sys) of jbazel and of the agent, and the agent's
# "Sync done" log line (blobs, apply ms, total ms). With RBS_BREAKDOWN_STRACE=1 the last run is traced (strace -c -f on jbazel and on the agent; summaries printed); with
# RBS_BREAKDOWN_PERF=1 it is profiled instead (perf record of both; top symbols printed).
# Usage: bash bench/sync-breakdown.sh   (after build_artifacts; never asserts times)
source "$(dirname "${BASH_SOURCE[0]}")/../e2e/lib.sh"
source "$REPO_ROOT/bench/lib.sh"
RUNS="${RBS_BREAKDOWN_RUNS:-3}"
FILES="${RBS_SYNC_FILES:-10000}"
install_bench_tools
build_artifacts
if [ "${RBS_BREAKDOWN_PERF:-0}" = 1 ]; then
    install_perf
    # The agent inherits the orchestrator's environment: its JIT frames get names (W^X off, as in stream-profile.sh).
    export DOTNET_PerfMapEnabled=1 DOTNET_EnableWriteXorExecute=0
fi
E2E_TMP="$(mktemp -d /tmp/rbs-sync-breakdown.XXXXXX)"
TREE="$E2E_TMP/tree"
sync_tree "$TREE" "$FILES"
start_orchestrator --build-tool /bin/true
CLEANUP_CMDS+=("kill_agents")
export XDG_CACHE_HOME="$E2E_TMP/cache"
JB="$RBS_ARTIFACTS/jbazel/jbazel --rbs_sync --rbs_status=always"
(cd "$TREE" && $JB version >/dev/null 2>&1)
AGENT_TREE="$(find "$E2E_TMP/state/workspaces" -mindepth 3 -maxdepth 3 -type d -name tree | head -n1)"
STATE="$(dirname "$AGENT_TREE")/.tree.rbs-sync"
AGENT_PID="$(agent_pids | head -n1)"
TRASH="$E2E_TMP/trash"; mkdir -p "$TRASH"
agent_cpu() { awk '{ print $14, $15 }' "/proc/$1/stat"; }
for i in $(seq "$RUNS"); do
    mv "$AGENT_TREE" "$TRASH/t$i"; mkdir "$AGENT_TREE"; mv "$STATE" "$TRASH/s$i"; mv "$XDG_CACHE_HOME" "$TRASH/c$i"
    sync; load="$(cut -d' ' -f1-3 /proc/loadavg)"
    trace=()
    if [ "${RBS_BREAKDOWN_STRACE:-0}" = 1 ] && [ "$i" = "$RUNS" ]; then
        strace -c -f -p "$AGENT_PID" -o "$E2E_TMP/agent.strace" & SPID=$!; sleep 1
        trace=(strace -c -f -o "$E2E_TMP/jbazel.strace")
    elif [ "${RBS_BREAKDOWN_PERF:-0}" = 1 ] && [ "$i" = "$RUNS" ]; then
        perf record -q -g -p "$AGENT_PID" -o "$E2E_TMP/perf-agent.data" 2>/dev/null & SPID=$!; sleep 1
        trace=(perf record -q -g -o "$E2E_TMP/perf-jbazel.data")
    fi
    agent_before="$(agent_cpu "$AGENT_PID")"
    start=$(date +%s%N)
    status="$(cd "$TREE" && RBS_PHASE_TRACE="$E2E_TMP/phases-$i" "${trace[@]}" /usr/bin/time -f 'jbazel CPU %U user + %S sys' -o "$E2E_TMP/time" $JB version 2>&1 >/dev/null | grep 'rbs: synced' || true)"
    end=$(date +%s%N)
    agent_after="$(agent_cpu "$AGENT_PID")"
    [ -n "${SPID:-}" ] && { kill -INT "$SPID"; wait "$SPID" 2>/dev/null || true; }
    echo "run $i: $(( (end - start) / 1000000 )) ms (load $load): $status"
    # jbazel's own marks (JBazel/Diagnostics/PhaseTrace.cs), in ms from the process start.
    echo "  phases (ms): $(awk -v start="$((start / 1000))" '{ t[$1] = $2 }
        END { printf "start %.0f | settings %.0f | GetServer %.0f | sync step %.0f | command %.0f | exit %.0f",
            (t["main"] - start) / 1000, (t["getserver"] - t["main"]) / 1000, (t["getserver-done"] - t["getserver"]) / 1000,
            (t["execute"] - t["getserver-done"]) / 1000, (t["execute-done"] - t["execute"]) / 1000, (t["exit"] - t["execute-done"]) / 1000 }' "$E2E_TMP/phases-$i")"
    echo "  $(cat "$E2E_TMP/time"); agent CPU $(awk -v b="$agent_before" -v a="$agent_after" -v hz="$(getconf CLK_TCK)" \
        'BEGIN { split(b, x); split(a, y); printf "%.2f user + %.2f sys", (y[1] - x[1]) / hz, (y[2] - x[2]) / hz }')"
    echo "  agent: $(grep -h 'Sync done' "$E2E_TMP"/state/agents/*.log "$E2E_TMP"/state/workspaces/*/*/*.log 2>/dev/null | tail -n1 | sed 's/.*Sync done/Sync done/')"
done
diff -r "$TREE" "$AGENT_TREE" >/dev/null && echo "agent copy equals the tree" || echo "agent copy DIFFERS"
if [ "${RBS_BREAKDOWN_STRACE:-0}" = 1 ]; then
    echo "== jbazel strace -c"; head -n 25 "$E2E_TMP/jbazel.strace"
    echo "== agent strace -c"; head -n 25 "$E2E_TMP/agent.strace"
fi
if [ "${RBS_BREAKDOWN_PERF:-0}" = 1 ]; then
    echo "== jbazel, top symbols"; perf_top "$E2E_TMP/perf-jbazel.data" sym 30
    echo "== agent, top symbols"; perf_top "$E2E_TMP/perf-agent.data" sym 40
fi
