#!/usr/bin/env bash
# Side-by-side benchmarks, one run, one table of ratios (not part of the tests; never asserts times).
#   warm no-op build:  jbazel (direct)  vs  local bazel  vs  ssh localhost bazel
#   1 GiB stdout:      jbazel run       vs  ssh localhost bazel run  vs  local bazel run | pipe  (plus raw ssh cat / pipe)
#   GetServer:         warm p50/p99 and cold (agent spawn) p50
#   State store:       GetServer on SQLite vs PostgreSQL, allocation throughput of 1 vs 2 replicas (bench/state.sh)
#   gateway (issue 3): warm no-op and 1 GiB stdout via the gateway (tunnel mode) vs direct vs ssh localhost
#                      vs an `ssh -R` reverse tunnel; N streams x 5 MB through one gateway (errors, gateway RSS)
# Usage: bash bench/run.sh   (installs openssh-server, hyperfine, socat when missing; runs its own sshd on 127.0.0.1:2222)
#   RBS_BENCH_STREAMS (default 2000), RBS_BENCH_STREAM_BYTES (default 5000000): the many-streams case.
source "$(dirname "${BASH_SOURCE[0]}")/../e2e/lib.sh"
BENCH_DIR="$REPO_ROOT/bench"
RUNS="${RBS_BENCH_RUNS:-15}"

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
install_bench_tools
build_artifacts
dotnet build "$BENCH_DIR/Rbs.Bench/Rbs.Bench.csproj" -c Release -o "$RBS_ARTIFACTS/rbs-bench" -nologo -v quiet >&2

E2E_TMP="$(mktemp -d /tmp/rbs-bench.XXXXXX)"
# The bench workspace is the e2e example plus bench/workspace (the 1 GiB `blast` target).
bench_workspace() { cp -r "$E2E_DIR/workspace" "$1" && cp -r "$BENCH_DIR/workspace/." "$1/"; }
for w in local ssh jbazel gw; do bench_workspace "$E2E_TMP/ws-$w"; done
CLEANUP_CMDS+=("cd '$E2E_TMP/ws-local' && bazel shutdown" "cd '$E2E_TMP/ws-ssh' && bazel shutdown"
    "cd '$E2E_TMP/ws-jbazel' && '$RBS_ARTIFACTS/jbazel/jbazel' shutdown"
    "cd '$E2E_TMP/ws-gw' && '$RBS_ARTIFACTS/jbazel/jbazel' --rbs_connect=tunnel --rbs_orchestrator=\$GW_PUBLIC shutdown" "kill_agents")

start_private_sshd

# The gateway and the orchestrator each need the other's address, so the gateway's ports are picked first.
# One token key, shared by the gateway and both orchestrators (they mint, the gateway validates).
head -c 32 /dev/urandom | base64 >"$E2E_TMP/token.key"
GW_PUBLIC_PORT="$(free_port)"; GW_AGENT_PORT="$(free_port)"
GW_PUBLIC="http://127.0.0.1:$GW_PUBLIC_PORT"; GW_AGENT="http://127.0.0.1:$GW_AGENT_PORT"
GATEWAY_FLAGS=(--gateway-public-address "$GW_PUBLIC" --gateway-agent-address "$GW_AGENT" --token-key-file "$E2E_TMP/token.key")

# The main orchestrator serves both modes: direct by default, tunnel when jbazel asks (--rbs_connect=tunnel).
start_orchestrator "${GATEWAY_FLAGS[@]}" --default-connect-mode direct
export RBS_BIN="$RBS_ARTIFACTS/jbazel/jbazel"

"$RBS_ARTIFACTS/rbs-gateway/rbs-gateway" --public-listen "127.0.0.1:$GW_PUBLIC_PORT" --agent-listen "127.0.0.1:$GW_AGENT_PORT" \
    --orchestrator "$RBS_ORCHESTRATOR" --token-key-file "$E2E_TMP/token.key" --ready-file "$E2E_TMP/gateway.json" \
    >>"$E2E_TMP/gateway.log" 2>&1 &
GW_PID=$!
CLEANUP_PIDS+=("$GW_PID")
wait_ready_file "$E2E_TMP/gateway.json" publicAddress "$GW_PID" >/dev/null
log "gateway pid $GW_PID: public $GW_PUBLIC, agents $GW_AGENT"
JBAZEL_GW="$RBS_BIN --rbs_connect=tunnel --rbs_orchestrator=$GW_PUBLIC"

# Warm everything once (bazel servers, agent, ssh host key).
(cd "$E2E_TMP/ws-local" && bazel build //app:noop >/dev/null 2>&1)
$SSH "cd '$E2E_TMP/ws-ssh' && bazel build //app:noop" >/dev/null 2>&1
(cd "$E2E_TMP/ws-jbazel" && "$RBS_BIN" build //app:noop >/dev/null 2>&1)
(cd "$E2E_TMP/ws-gw" && $JBAZEL_GW build //app:noop >/dev/null 2>&1)

log "warm no-op build"
mapfile -t noop < <(hf noop \
    "bash -c 'cd $E2E_TMP/ws-local && bazel build //app:noop'" \
    "bash -c 'cd $E2E_TMP/ws-jbazel && $RBS_BIN build //app:noop'" \
    "bash -c '$SSH \"cd $E2E_TMP/ws-ssh && bazel build //app:noop\"'" \
    "bash -c 'cd $E2E_TMP/ws-gw && $JBAZEL_GW build //app:noop'")

log "1 GiB stdout"
(cd "$E2E_TMP/ws-local" && bazel build //bench:blast >/dev/null 2>&1)
$SSH "cd '$E2E_TMP/ws-ssh' && bazel build //bench:blast" >/dev/null 2>&1
(cd "$E2E_TMP/ws-jbazel" && "$RBS_BIN" build //bench:blast >/dev/null 2>&1)
(cd "$E2E_TMP/ws-gw" && $JBAZEL_GW build //bench:blast >/dev/null 2>&1)

# The `ssh -R` hack: the "agent" side serves 1 GiB on a local port (socat running head) and publishes it to
# the "client" side with `ssh -N -R`, i.e. a reverse forward opened by the agent side's ssh client into the
# client side's sshd (our 127.0.0.1:2222). The client reads the forwarded port with socat. Measured: 1 GiB
# from a process on the agent side to the client, through one encrypted ssh channel (no bazel, no gRPC).
SVC_PORT="$(free_port)"; RFWD_PORT="$(free_port)"
socat "TCP-LISTEN:$SVC_PORT,bind=127.0.0.1,reuseaddr,fork" EXEC:"head -c 1073741824 /dev/zero" &
CLEANUP_PIDS+=("$!")
${SSH% *} -N -o ExitOnForwardFailure=yes -R "127.0.0.1:$RFWD_PORT:127.0.0.1:$SVC_PORT" 127.0.0.1 &
CLEANUP_PIDS+=("$!")
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$RFWD_PORT") 2>/dev/null && break; sleep 0.1; done

mapfile -t gib < <(hf_shell gib \
    "cd $E2E_TMP/ws-local && bazel run //bench:blast 2>/dev/null | cat >/dev/null" \
    "cd $E2E_TMP/ws-jbazel && $RBS_BIN run //bench:blast 2>/dev/null >/dev/null" \
    "$SSH 'cd $E2E_TMP/ws-ssh && bazel run //bench:blast 2>/dev/null' >/dev/null" \
    "head -c 1073741824 /dev/zero | cat >/dev/null" \
    "$SSH 'head -c 1073741824 /dev/zero' >/dev/null" \
    "cd $E2E_TMP/ws-gw && $JBAZEL_GW run //bench:blast 2>/dev/null >/dev/null" \
    "socat -u TCP:127.0.0.1:$RFWD_PORT - >/dev/null")

# N streams x 5 MB through one gateway: a dedicated orchestrator whose agents' build tool is blast.sh
# (`blast.sh zeros <bytes>` writes exactly <bytes>), tunnel mode by default, same gateway and key.
log "many streams through one gateway"
STREAMS="${RBS_BENCH_STREAMS:-2000}"; STREAM_BYTES="${RBS_BENCH_STREAM_BYTES:-5000000}"
mkdir -p "$E2E_TMP/blast-state"
bench_workspace "$E2E_TMP/ws-blast"
"$RBS_ARTIFACTS/rbs-orchestrator/rbs-orchestrator" --local-mode --port 0 \
    --state-path "$E2E_TMP/blast-state/orchestrator.db" --ready-file "$E2E_TMP/blast-state/orchestrator.json" \
    --agent-path "$RBS_ARTIFACTS/rbs-agent/rbs-agent" --build-tool "$BENCH_DIR/tools/blast.sh" \
    --default-connect-mode tunnel "${GATEWAY_FLAGS[@]}" >>"$E2E_TMP/blast-orchestrator.log" 2>&1 &
BLAST_ORCH_PID=$!
CLEANUP_PIDS+=("$BLAST_ORCH_PID")
CLEANUP_CMDS+=("for f in '$E2E_TMP'/blast-state/agents/*.json; do kill -TERM \$(jq -r .pid \"\$f\"); done")
BLAST_ORCH="$(wait_ready_file "$E2E_TMP/blast-state/orchestrator.json" address "$BLAST_ORCH_PID")"
# GetServer in tunnel mode (straight to this orchestrator; the gateway proxies the other one) -> route + token.
read -r BLAST_ROUTE BLAST_TOKEN < <("$RBS_ARTIFACTS/rbs-bench/rbs-bench" getserver-tunnel "$BLAST_ORCH" "$E2E_TMP/ws-blast")
streams_out="$("$RBS_ARTIFACTS/rbs-bench/rbs-bench" streams "$GW_PUBLIC" "$BLAST_ROUTE" "$BLAST_TOKEN" "$STREAMS" "$STREAM_BYTES" || true)"
printf '%s\n' "$streams_out" >&2
read -r streams_ok streams_err streams_s streams_mibs <<<"$(head -n1 <<<"$streams_out")"
gw_hwm_mib="$(awk '/^VmHWM:/ { printf "%.0f", $2 / 1024 }' "/proc/$GW_PID/status")"

log "GetServer latency"
read -r gs_p50 gs_p99 gs_cold < <("$RBS_ARTIFACTS/rbs-bench/rbs-bench" getserver "$RBS_ORCHESTRATOR" "$E2E_TMP/ws-jbazel" 2000 10)

log "state store: SQLite vs PostgreSQL, replicas"
# The binaries are fresh by now: state.sh must not publish over the ones still running.
mapfile -t state_rows < <(RBS_REBUILD=0 bash "$BENCH_DIR/state.sh")


echo
echo "| benchmark | measured | ratio | target |"
echo "|---|---|---|---|"
echo "| warm no-op build, local bazel | $(ms "${noop[0]}") | 1.00x | |"
echo "| warm no-op build, jbazel (direct) | $(ms "${noop[1]}") | $(ratio "${noop[1]}" "${noop[0]}") of local | <= 1.10x |"
echo "| warm no-op build, ssh localhost bazel | $(ms "${noop[2]}") | $(ratio "${noop[2]}" "${noop[0]}") of local | |"
echo "| 1 GiB stdout, local bazel run piped | $(mibs "${gib[0]}") | 1.00x | |"
echo "| 1 GiB stdout, jbazel run (direct) | $(mibs "${gib[1]}") | $(ratio "${gib[0]}" "${gib[1]}") of local, $(ratio "${gib[2]}" "${gib[1]}") of ssh | >= 1.00x of ssh |"
echo "| 1 GiB stdout, ssh localhost bazel run | $(mibs "${gib[2]}") | $(ratio "${gib[0]}" "${gib[2]}") of local | |"
echo "| 1 GiB raw, local pipe (head \| cat) | $(mibs "${gib[3]}") | | |"
echo "| 1 GiB raw, ssh localhost cat | $(mibs "${gib[4]}") | $(ratio "${gib[3]}" "${gib[4]}") of pipe | |"
echo "| warm no-op build, jbazel via gateway (tunnel) | $(ms "${noop[3]}") | $(ratio "${noop[3]}" "${noop[0]}") of local | <= 1.15x |"
echo "| 1 GiB stdout, jbazel run via gateway (tunnel) | $(mibs "${gib[5]}") | $(ratio "${gib[1]}" "${gib[5]}") of direct, $(ratio "${gib[2]}" "${gib[5]}") of ssh | >= 0.80x of direct, >= 1.00x of ssh |"
echo "| 1 GiB raw, ssh -R reverse tunnel (socat head -> ssh -R -> socat) | $(mibs "${gib[6]}") | $(ratio "${gib[3]}" "${gib[6]}") of pipe | |"
echo "| $STREAMS streams x $STREAM_BYTES B via one gateway | $streams_ok ok, $streams_err errors, ${streams_s} s, ${streams_mibs} MiB/s | gateway VmHWM $gw_hwm_mib MiB | 0 errors, < 1024 MiB |"
echo "| GetServer warm p50 / p99 | $gs_p50 ms / $gs_p99 ms | | < 5 ms |"
echo "| GetServer cold (agent spawn) p50 | $gs_cold ms | | < 500 ms |"
printf '%s\n' "${state_rows[@]}"
