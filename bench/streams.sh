#!/usr/bin/env bash
# Many concurrent ExecuteCommand streams through ONE gateway (issue 12: 2,000 x 5 MB, 0 errors, gateway VmHWM < 512 MiB).
# Starts its own rbs-gateway and an orchestrator whose agents' build tool is bench/tools/blast.sh (`blast.sh zeros <bytes>`
# writes exactly <bytes>), in tunnel mode, gets a route + session token with one GetServer, then runs `rbs-bench streams`
# ROUNDS times against the same gateway. bench/run.sh calls this script for its many-streams row.
# Usage: bash bench/streams.sh
#   RBS_BENCH_STREAMS (default 2000), RBS_BENCH_STREAM_BYTES (default 5000000), RBS_BENCH_STREAMS_ROUNDS (default 1),
#   RBS_BENCH_STREAMS_CONCURRENCY (default: all at once)
#   RBS_BENCH_GATEWAY_ENV: extra environment for the gateway only, e.g. "DOTNET_gcServer=1" (A/B of runtime knobs)
# stderr: progress and, per round, the bench's output plus the gateway's VmHWM/VmRSS.
# stdout: one line per round, "<ok> <errors> <seconds> <aggregate MiB/s> <gateway VmHWM MiB> <gateway VmRSS MiB>"
# (VmHWM is the process's peak so far, so the last line covers every round).
source "$(dirname "${BASH_SOURCE[0]}")/../e2e/lib.sh"
BENCH_DIR="$REPO_ROOT/bench"
source "$BENCH_DIR/lib.sh"
STREAMS="${RBS_BENCH_STREAMS:-2000}"
STREAM_BYTES="${RBS_BENCH_STREAM_BYTES:-5000000}"
ROUNDS="${RBS_BENCH_STREAMS_ROUNDS:-1}"
CONCURRENCY="${RBS_BENCH_STREAMS_CONCURRENCY:-$STREAMS}"
read -r -a GATEWAY_ENV <<<"${RBS_BENCH_GATEWAY_ENV:-}"

build_artifacts
bench_tool
E2E_TMP="$(mktemp -d /tmp/rbs-streams.XXXXXX)"
mkdir -p "$E2E_TMP/state" "$E2E_TMP/ws"
cp -r "$BENCH_DIR/workspace/." "$E2E_TMP/ws/"

head -c 32 /dev/urandom | base64 >"$E2E_TMP/token.key"
GW_PUBLIC_PORT="$(free_port)"; GW_AGENT_PORT="$(free_port)"
GW_PUBLIC="http://127.0.0.1:$GW_PUBLIC_PORT"; GW_AGENT="http://127.0.0.1:$GW_AGENT_PORT"
# The gateway and the orchestrator each need the other's address, so all ports are picked first.
ORCH_PORT="$(free_port)"
start_bench_gateway "$GW_PUBLIC_PORT" "$GW_AGENT_PORT" "http://127.0.0.1:$ORCH_PORT" "${GATEWAY_ENV[@]}"

"$RBS_ARTIFACTS/rbs-orchestrator/rbs-orchestrator" --local-mode --port "$ORCH_PORT" \
    --state-path "$E2E_TMP/state/orchestrator.db" --ready-file "$E2E_TMP/state/orchestrator.json" \
    --agent-path "$RBS_ARTIFACTS/rbs-agent/rbs-agent" --build-tool "$BENCH_DIR/tools/blast.sh" \
    --default-connect-mode tunnel --gateway-public-address "$GW_PUBLIC" --gateway-agent-address "$GW_AGENT" \
    --token-key-file "$E2E_TMP/token.key" >>"$E2E_TMP/orchestrator.log" 2>&1 &
ORCH_PID=$!
CLEANUP_PIDS+=("$ORCH_PID")
CLEANUP_CMDS+=("kill_agents")
wait_ready_file "$E2E_TMP/gateway.json" publicAddress "$GW_PID" >/dev/null
ORCH="$(wait_ready_file "$E2E_TMP/state/orchestrator.json" address "$ORCH_PID")"
log "gateway pid $GW_PID (${GATEWAY_ENV[*]:-default runtime settings}), orchestrator $ORCH; $STREAMS streams x $STREAM_BYTES B, $ROUNDS round(s)"
# GetServer in tunnel mode straight to the orchestrator (it waits until the agent's tunnels are registered).
read -r ROUTE TOKEN < <("$BENCH" getserver-tunnel "$ORCH" "$E2E_TMP/ws")

status_mib() { awk -v k="$1:" '$1 == k { printf "%.0f", $2 / 1024 }' "/proc/$GW_PID/status"; }
log "gateway before the first round: VmRSS $(status_mib VmRSS) MiB; load $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq "$ROUNDS"); do
    out="$("$BENCH" streams "$GW_PUBLIC" "$ROUTE" "$TOKEN" "$STREAMS" "$STREAM_BYTES" "$CONCURRENCY" || true)"
    printf '%s\n' "$out" >&2
    read -r ok err seconds mibs <<<"$(head -n1 <<<"$out")"
    hwm="$(status_mib VmHWM)"; rss="$(status_mib VmRSS)"
    log "round $round: $ok ok, $err errors, $seconds s, aggregate $mibs MiB/s; gateway VmHWM $hwm MiB, VmRSS $rss MiB; load $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "${ok:-0} ${err:-$STREAMS} ${seconds:-0} ${mibs:-0} $hwm $rss"
done
