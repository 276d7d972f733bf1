#!/usr/bin/env bash
# Where a first sync's time goes (bench/README.md, "Workspace sync"): generates bench/sync.sh's tree, starts a local stack,
# then runs RBS_BREAKDOWN_RUNS first syncs (empty agent workspace, cold digest cache) and prints for each jbazel's
# wall time and status line, and the agent's "Sync done" log line (blobs, apply ms, total ms). With
# RBS_BREAKDOWN_STRACE=1 the last run is traced (strace -c -f on jbazel and on the agent; summaries printed).
# Usage: bash bench/sync-breakdown.sh   (after build_artifacts; never asserts times)
source "$(dirname "${BASH_SOURCE[0]}")/../e2e/lib.sh"
source "$REPO_ROOT/bench/lib.sh"
RUNS="${RBS_BREAKDOWN_RUNS:-3}"
FILES="${RBS_SYNC_FILES:-10000}"
build_artifacts
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
for i in $(seq "$RUNS"); do
    mv "$AGENT_TREE" "$TRASH/t$i"; mkdir "$AGENT_TREE"; mv "$STATE" "$TRASH/s$i"; mv "$XDG_CACHE_HOME" "$TRASH/c$i"
    sync; load="$(cut -d' ' -f1-3 /proc/loadavg)"
    trace=()
    if [ "${RBS_BREAKDOWN_STRACE:-0}" = 1 ] && [ "$i" = "$RUNS" ]; then
        strace -c -f -p "$AGENT_PID" -o "$E2E_TMP/agent.strace" & SPID=$!; sleep 1
        trace=(strace -c -f -o "$E2E_TMP/jbazel.strace")
    fi
    start=$(date +%s%N)
    status="$(cd "$TREE" && "${trace[@]}" $JB version 2>&1 >/dev/null | grep 'rbs: synced' || true)"
    end=$(date +%s%N)
    [ -n "${SPID:-}" ] && { kill -TERM "$SPID"; wait "$SPID" 2>/dev/null || true; }
    echo "run $i: $(( (end - start) / 1000000 )) ms (load $load): $status"
    echo "  agent: $(grep -h 'Sync done' "$E2E_TMP"/state/agents/*.log "$E2E_TMP"/state/workspaces/*/*/*.log 2>/dev/null | tail -n1 | sed 's/.*Sync done/Sync done/')"
done
diff -r "$TREE" "$AGENT_TREE" >/dev/null && echo "agent copy equals the tree" || echo "agent copy DIFFERS"
if [ "${RBS_BREAKDOWN_STRACE:-0}" = 1 ]; then
    echo "== jbazel strace -c"; head -n 25 "$E2E_TMP/jbazel.strace"
    echo "== agent strace -c"; head -n 25 "$E2E_TMP/agent.strace"
fi
