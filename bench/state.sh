#!/usr/bin/env bash
# State-store benchmarks (issue 5), printed as rows of bench/run.sh's table (run.sh runs this at its end):
#   GetServer warm p50/p99 (and cold p50) on SQLite vs PostgreSQL, one orchestrator each;
#   allocation throughput: N GetServers for distinct repos, 1 vs 2 replicas on one PostgreSQL database.
# Real rbs-agent processes are spawned (one per allocation) and all killed afterwards, in every state dir.
# Usage: bash bench/state.sh   (needs PostgreSQL: e2e/setup_postgres.sh starts it and creates role rbs)
#   RBS_BENCH_GETSERVER_CALLS (default 2000), RBS_BENCH_ALLOCATIONS (default 16), RBS_BENCH_CONCURRENCY (default 8)
source "$(dirname "${BASH_SOURCE[0]}")/../e2e/lib.sh"
BENCH_DIR="$REPO_ROOT/bench"
CALLS="${RBS_BENCH_GETSERVER_CALLS:-2000}"
ALLOCATIONS="${RBS_BENCH_ALLOCATIONS:-16}"
CONCURRENCY="${RBS_BENCH_CONCURRENCY:-8}"

build_artifacts
if [ ! -x "$RBS_ARTIFACTS/rbs-bench/rbs-bench" ] || [ "${RBS_REBUILD:-0}" = 1 ]; then
    dotnet build "$BENCH_DIR/Rbs.Bench/Rbs.Bench.csproj" -c Release -o "$RBS_ARTIFACTS/rbs-bench" "${DOTNET_LAYOUT[@]}" -nologo -v quiet >&2
fi
BENCH="$RBS_ARTIFACTS/rbs-bench/rbs-bench"

E2E_TMP="$(mktemp -d /tmp/rbs-bench-state.XXXXXX)"
mkdir -p "$E2E_TMP/ws"
CLEANUP_CMDS+=("kill_agents")

# A fresh database on the local server, dropped on exit (after the agents, before the orchestrators).
admin="$(bash "$REPO_ROOT/e2e/setup_postgres.sh")"
pg_field() { tr ';' '\n' <<<"$admin" | sed -n "s/^$1=//Ip" | head -n 1; }
export PGHOST="$(pg_field Host)" PGPORT="$(pg_field Port)" PGUSER="$(pg_field Username)" PGPASSWORD="$(pg_field Password)"
database="rbs_bench_$(date +%s)_$$"
psql -q -d postgres -c "CREATE DATABASE \"$database\" TEMPLATE template0" >&2
CLEANUP_CMDS+=("psql -q -d postgres -c 'DROP DATABASE IF EXISTS \"$database\" WITH (FORCE)'")
postgres="Host=$PGHOST;Port=$PGPORT;Username=$PGUSER;Password=$PGPASSWORD;Database=$database"

# start_replica NAME [flags...]: an orchestrator with its own state dir $E2E_TMP/state-NAME; sets REPLICA_URL.
# No agent limits: the allocation benchmark starts $ALLOCATIONS agents for one user (its agents run /bin/true).
start_replica() {
    local name="$1"; shift
    local state="$E2E_TMP/state-$name"
    mkdir -p "$state"
    "$RBS_ARTIFACTS/rbs-orchestrator/rbs-orchestrator" --local-mode --port 0 \
        --state-path "$state/orchestrator.db" --ready-file "$state/orchestrator.json" \
        --agent-path "$RBS_ARTIFACTS/rbs-agent/rbs-agent" --max-agents 0 --max-agents-per-user 0 "$@" \
        >>"$E2E_TMP/orchestrator-$name.log" 2>&1 &
    CLEANUP_PIDS+=("$!")
    REPLICA_URL="$(wait_ready_file "$state/orchestrator.json" address "$!")"
    log "orchestrator $name (pid $!) at $REPLICA_URL"
}

start_replica sqlite; sqlite_url="$REPLICA_URL"
start_replica pg1 --postgres "$postgres"; pg1_url="$REPLICA_URL"

log "GetServer latency, SQLite vs PostgreSQL ($CALLS warm calls each)"
read -r sq_p50 sq_p99 sq_cold < <("$BENCH" getserver "$sqlite_url" "$E2E_TMP/ws" "$CALLS" 5)
read -r pg_p50 pg_p99 pg_cold < <("$BENCH" getserver "$pg1_url" "$E2E_TMP/ws" "$CALLS" 5)

log "allocation throughput: $ALLOCATIONS agents, $CONCURRENCY in flight, 1 vs 2 replicas on PostgreSQL"
read -r one_rate one_p50 one_p99 < <("$BENCH" allocate "$pg1_url" "$E2E_TMP/ws" "$ALLOCATIONS" "$CONCURRENCY")
kill_agents
start_replica pg2 --postgres "$postgres"; pg2_url="$REPLICA_URL"
read -r two_rate two_p50 two_p99 < <("$BENCH" allocate "$pg1_url,$pg2_url" "$E2E_TMP/ws" "$ALLOCATIONS" "$CONCURRENCY")
kill_agents

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }
echo "| GetServer warm p50 / p99, SQLite | $sq_p50 ms / $sq_p99 ms | 1.00x | | |"
echo "| GetServer warm p50 / p99, PostgreSQL | $pg_p50 ms / $pg_p99 ms | $(ratio "$pg_p50" "$sq_p50") of SQLite (p50) | | |"
echo "| GetServer cold (agent spawn) p50, SQLite / PostgreSQL | $sq_cold ms / $pg_cold ms | | | |"
echo "| allocations/s, 1 replica on PostgreSQL ($ALLOCATIONS agents, $CONCURRENCY in flight) | $one_rate/s (p50 $one_p50 ms, p99 $one_p99 ms) | 1.00x | | |"
echo "| allocations/s, 2 replicas on one PostgreSQL | $two_rate/s (p50 $two_p50 ms, p99 $two_p99 ms) | $(ratio "$two_rate" "$one_rate") of 1 replica | | |"
