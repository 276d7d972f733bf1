#!/usr/bin/env bash
# Side-by-side benchmarks, one run, one table of ratios with a pass/miss column per target (not part of the tests;
# never asserts times). Every compared set of commands runs interleaved (A B A B ...) and is reported as medians
# with the interquartile range; the machine's load at the start is printed first.
#   warm no-op build:  local bazel (as a user types it: Debian's /usr/bin/bazel wrapper) vs jbazel direct vs jbazel
#                      through the gateway vs jbazel through nginx (the ingress, as the chart configures it) + the gateway
#                      vs ssh localhost bazel
#   1 GiB stdout:      `bazel run` of a 1 GiB writer: local piped, jbazel direct, jbazel via gateway, via nginx +
#                      gateway, ssh localhost;
#                      raw baselines: a local pipe, ssh cat, an `ssh -R` reverse tunnel
#   streams:           N streams x 5 MB through one gateway (errors, gateway peak RSS, aggregate throughput)
#   GetServer:         warm p50/p99 and cold (agent spawn) p50
#   state store:       bench/state.sh (SQLite vs PostgreSQL, 1 vs 2 replicas)
#   workspace sync:    bench/sync.sh (10k files: first / no-op / 1-file edit vs rsync -a over ssh)
# Usage: bash bench/run.sh   (installs openssh-server, hyperfine, socat, rsync when missing; its own sshd on a free 127.0.0.1 port)
#   RBS_BENCH_RUNS (default 15): runs of each no-op command; RBS_BENCH_BIG_RUNS (default 5): runs of each 1 GiB command
#   RBS_BENCH_STREAMS (default 2000), RBS_BENCH_STREAM_BYTES (default 5000000): the many-streams case
#   RBS_BENCH_SKIP_STATE=1, RBS_BENCH_SKIP_SYNC=1: leave those parts out (the table says so)
source "$(dirname "${BASH_SOURCE[0]}")/../e2e/lib.sh"
BENCH_DIR="$REPO_ROOT/bench"
RUNS="${RBS_BENCH_RUNS:-15}"
BIG_RUNS="${RBS_BENCH_BIG_RUNS:-5}"

source "$BENCH_DIR/lib.sh"
install_bench_tools
machine_state
build_artifacts
bench_tool

E2E_TMP="$(mktemp -d /tmp/rbs-bench.XXXXXX)"
for w in local ssh jbazel gw; do bench_workspace "$E2E_TMP/ws-$w"; done
CLEANUP_CMDS+=("cd '$E2E_TMP/ws-local' && bazel shutdown" "cd '$E2E_TMP/ws-ssh' && bazel shutdown"
    "cd '$E2E_TMP/ws-jbazel' && '$RBS_ARTIFACTS/jbazel/jbazel' shutdown"
    "cd '$E2E_TMP/ws-gw' && '$RBS_ARTIFACTS/jbazel/jbazel' --rbs_connect=tunnel --rbs_orchestrator=\$GW_PUBLIC shutdown" "kill_agents")
NOOP_TARGET="//bench:noop"
BLAST_TARGET="//bench:blast"

start_private_sshd

# The gateway and the orchestrator each need the other's address, so the gateway's ports are picked first.
# One token key, shared by the gateway and both orchestrators (they mint, the gateway validates).
head -c 32 /dev/urandom | base64 >"$E2E_TMP/token.key"
GW_PUBLIC_PORT="$(free_port)"; GW_AGENT_PORT="$(free_port)"
GW_PUBLIC="http://127.0.0.1:$GW_PUBLIC_PORT"; GW_AGENT="http://127.0.0.1:$GW_AGENT_PORT"
GATEWAY_FLAGS=(--gateway-public-address "$GW_PUBLIC" --gateway-agent-address "$GW_AGENT" --token-key-file "$E2E_TMP/token.key")

# The main orchestrator serves both modes: direct by default, tunnel when jbazel asks (--rbs_connect=tunnel).
# No agent limits: the cold GetServer benchmark starts a fresh agent per call.
start_orchestrator "${GATEWAY_FLAGS[@]}" --default-connect-mode direct --max-agents 0 --max-agents-per-user 0
export RBS_BIN="$RBS_ARTIFACTS/jbazel/jbazel"

start_bench_gateway "$GW_PUBLIC_PORT" "$GW_AGENT_PORT" "$RBS_ORCHESTRATOR"
wait_ready_file "$E2E_TMP/gateway.json" publicAddress "$GW_PID" >/dev/null
log "gateway pid $GW_PID: public $GW_PUBLIC, agents $GW_AGENT"
JBAZEL_GW="$RBS_BIN --rbs_connect=tunnel --rbs_orchestrator=$GW_PUBLIC"
# The same gateway behind nginx, configured as the chart's ingress (e2e/lib.sh write_nginx_conf): the clients' side
# only (the agents keep dialling the gateway itself). Same workspace, so the same agent and bazel server as "gateway".
NGX_PORT="$(free_port)"
write_nginx_conf "$E2E_TMP/nginx" "127.0.0.1:$NGX_PORT" "127.0.0.1:$(free_port)" "127.0.0.1:$GW_PUBLIC_PORT" "127.0.0.1:$GW_AGENT_PORT"
nginx -p "$E2E_TMP/nginx" -c "$E2E_TMP/nginx/nginx.conf" >>"$E2E_TMP/nginx/stdout.log" 2>&1 &
CLEANUP_PIDS+=("$!")
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$NGX_PORT") 2>/dev/null && break; sleep 0.1; done
JBAZEL_NGX="$RBS_BIN --rbs_connect=tunnel --rbs_orchestrator=http://127.0.0.1:$NGX_PORT"

# Warm everything once (bazel servers, agents, ssh host key).
(cd "$E2E_TMP/ws-local" && bazel build "$NOOP_TARGET" >/dev/null 2>&1)
$SSH "cd '$E2E_TMP/ws-ssh' && bazel build $NOOP_TARGET" >/dev/null 2>&1
(cd "$E2E_TMP/ws-jbazel" && "$RBS_BIN" build "$NOOP_TARGET" >/dev/null 2>&1)
(cd "$E2E_TMP/ws-gw" && $JBAZEL_GW build "$NOOP_TARGET" >/dev/null 2>&1)
(cd "$E2E_TMP/ws-gw" && $JBAZEL_NGX build "$NOOP_TARGET" >/dev/null 2>&1)

log "warm no-op build ($RUNS interleaved runs each)"
# 10 unmeasured rounds first: a bazel server's JVM takes ~10 builds to warm up (its no-op went 600 -> 290 ms over
# them, bench/README.md third round), and each server here (local, the direct agent's, the tunnel agent's) is new.
noop="$(interleave noop "$RUNS" 10 \
    "local=cd $E2E_TMP/ws-local && bazel build $NOOP_TARGET" \
    "direct=cd $E2E_TMP/ws-jbazel && $RBS_BIN build $NOOP_TARGET" \
    "gateway=cd $E2E_TMP/ws-gw && $JBAZEL_GW build $NOOP_TARGET" \
    "nginx=cd $E2E_TMP/ws-gw && $JBAZEL_NGX build $NOOP_TARGET" \
    "ssh=$SSH 'cd $E2E_TMP/ws-ssh && bazel build $NOOP_TARGET'")"

log "1 GiB stdout ($BIG_RUNS interleaved runs each)"
(cd "$E2E_TMP/ws-local" && bazel build "$BLAST_TARGET" >/dev/null 2>&1)
$SSH "cd '$E2E_TMP/ws-ssh' && bazel build $BLAST_TARGET" >/dev/null 2>&1
(cd "$E2E_TMP/ws-jbazel" && "$RBS_BIN" build "$BLAST_TARGET" >/dev/null 2>&1)
(cd "$E2E_TMP/ws-gw" && $JBAZEL_GW build "$BLAST_TARGET" >/dev/null 2>&1)

# The `ssh -R` hack: the "agent" side serves 1 GiB on a local port (socat running head) and publishes it to
# the "client" side with `ssh -N -R`, i.e. a reverse forward opened by the agent side's ssh client into the
# client side's sshd (our private one). The client reads the forwarded port with socat. Measured: 1 GiB
# from a process on the agent side to the client, through one encrypted ssh channel (no bazel, no gRPC).
SVC_PORT="$(free_port)"; RFWD_PORT="$(free_port)"
socat "TCP-LISTEN:$SVC_PORT,bind=127.0.0.1,reuseaddr,fork" EXEC:"head -c 1073741824 /dev/zero" &
CLEANUP_PIDS+=("$!")
${SSH% *} -N -o ExitOnForwardFailure=yes -R "127.0.0.1:$RFWD_PORT:127.0.0.1:$SVC_PORT" 127.0.0.1 &
CLEANUP_PIDS+=("$!")
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$RFWD_PORT") 2>/dev/null && break; sleep 0.1; done

gib="$(interleave gib "$BIG_RUNS" 1 \
    "local=cd $E2E_TMP/ws-local && bazel run $BLAST_TARGET 2>/dev/null | cat >/dev/null" \
    "direct=cd $E2E_TMP/ws-jbazel && $RBS_BIN run $BLAST_TARGET 2>/dev/null >/dev/null" \
    "gateway=cd $E2E_TMP/ws-gw && $JBAZEL_GW run $BLAST_TARGET 2>/dev/null >/dev/null" \
    "nginx=cd $E2E_TMP/ws-gw && $JBAZEL_NGX run $BLAST_TARGET 2>/dev/null >/dev/null" \
    "ssh=$SSH 'cd $E2E_TMP/ws-ssh && bazel run $BLAST_TARGET 2>/dev/null' >/dev/null" \
    "pipe=head -c 1073741824 /dev/zero | cat >/dev/null" \
    "sshcat=$SSH 'head -c 1073741824 /dev/zero' >/dev/null" \
    "sshR=socat -u TCP:127.0.0.1:$RFWD_PORT - >/dev/null")"

# N streams x 5 MB through one gateway: bench/streams.sh (its own gateway and an orchestrator whose agents' build tool
# is blast.sh, tunnel mode); the single-stream figure beside it is the 1 GiB gateway row above.
log "many streams through one gateway"
STREAMS="${RBS_BENCH_STREAMS:-2000}"; STREAM_BYTES="${RBS_BENCH_STREAM_BYTES:-5000000}"
read -r streams_ok streams_err streams_s streams_mibs gw_hwm_mib _ < <(RBS_REBUILD=0 RBS_BENCH_STREAMS="$STREAMS" \
    RBS_BENCH_STREAM_BYTES="$STREAM_BYTES" RBS_BENCH_STREAMS_ROUNDS=1 bash "$BENCH_DIR/streams.sh" | tail -n1) || true

log "GetServer latency"
read -r gs_p50 gs_p99 gs_cold < <("$BENCH" getserver "$RBS_ORCHESTRATOR" "$E2E_TMP/ws-jbazel" 2000 10)

state_rows=()
if [ "${RBS_BENCH_SKIP_STATE:-0}" != 1 ]; then
    log "state store: SQLite vs PostgreSQL, replicas"
    # The binaries are fresh by now: state.sh must not publish over the ones still running.
    mapfile -t state_rows < <(RBS_REBUILD=0 bash "$BENCH_DIR/state.sh")
fi
sync_rows=()
if [ "${RBS_BENCH_SKIP_SYNC:-0}" != 1 ]; then
    log "workspace sync vs rsync"
    mapfile -t sync_rows < <(RBS_REBUILD=0 bash "$BENCH_DIR/sync.sh")
fi

m() { field "$noop" "$1" median; }
g() { field "$gib" "$1" median; }
# Throughput ratios are time ratios inverted: X of Y = time(Y) / time(X).
noop_direct="$(ratio_value "$(m direct)" "$(m local)")"
noop_gw="$(ratio_value "$(m gateway)" "$(m local)")"
gib_direct_ssh="$(ratio_value "$(g ssh)" "$(g direct)")"
gib_gw_direct="$(ratio_value "$(g direct)" "$(g gateway)")"
noop_cell() { echo "$(ms "$(m "$1")") ($(spread "$(field "$noop" "$1" p25)" "$(field "$noop" "$1" p75)"))"; }
gib_cell() { echo "$(mibs "$(g "$1")") ($(spread "$(field "$gib" "$1" p25)" "$(field "$gib" "$1" p75)"))"; }
streams_ok_verdict="$( [ "${streams_err:-1}" = 0 ] && [ "${streams_ok:-0}" = "$STREAMS" ] && verdict "$gw_hwm_mib" "<" 512 || echo MISS)"

echo
echo "Machine: $MACHINE_STATE. Medians of interleaved runs (± half the interquartile range, relative)."
echo
echo "| benchmark | measured | ratio | target | result |"
echo "|---|---|---|---|---|"
echo "| warm no-op build, local bazel | $(noop_cell local) | 1.00x | | |"
echo "| warm no-op build, jbazel (direct) | $(noop_cell direct) | $(ratio "$(m direct)" "$(m local)") of local | <= 1.00x | $(verdict "$noop_direct" "<=" 1.00) |"
echo "| warm no-op build, jbazel via gateway (tunnel) | $(noop_cell gateway) | $(ratio "$(m gateway)" "$(m local)") of local | <= 1.05x | $(verdict "$noop_gw" "<=" 1.05) |"
echo "| warm no-op build, jbazel via nginx + gateway | $(noop_cell nginx) | $(ratio "$(m nginx)" "$(m local)") of local, $(ratio "$(m nginx)" "$(m gateway)") of gateway | | |"
echo "| warm no-op build, ssh localhost bazel | $(noop_cell ssh) | $(ratio "$(m ssh)" "$(m local)") of local | | |"
echo "| 1 GiB stdout, local bazel run piped | $(gib_cell local) | 1.00x | | |"
echo "| 1 GiB stdout, jbazel run (direct) | $(gib_cell direct) | $(ratio "$(g ssh)" "$(g direct)") of ssh, $(ratio "$(g local)" "$(g direct)") of local | >= 2.00x of ssh | $(verdict "$gib_direct_ssh" ">=" 2.00) |"
echo "| 1 GiB stdout, jbazel run via gateway (tunnel) | $(gib_cell gateway) | $(ratio "$(g direct)" "$(g gateway)") of direct, $(ratio "$(g ssh)" "$(g gateway)") of ssh | >= 0.90x of direct | $(verdict "$gib_gw_direct" ">=" 0.90) |"
echo "| 1 GiB stdout, jbazel run via nginx + gateway | $(gib_cell nginx) | $(ratio "$(g gateway)" "$(g nginx)") of gateway, $(ratio "$(g direct)" "$(g nginx)") of direct | | |"
echo "| 1 GiB stdout, ssh localhost bazel run | $(gib_cell ssh) | $(ratio "$(g local)" "$(g ssh)") of local | | |"
echo "| 1 GiB raw, local pipe (head \| cat) | $(gib_cell pipe) | | | |"
echo "| 1 GiB raw, ssh localhost cat | $(gib_cell sshcat) | $(ratio "$(g pipe)" "$(g sshcat)") of pipe | | |"
echo "| 1 GiB raw, ssh -R reverse tunnel (socat head -> ssh -R -> socat) | $(gib_cell sshR) | $(ratio "$(g pipe)" "$(g sshR)") of pipe | | |"
echo "| $STREAMS streams x $STREAM_BYTES B via one gateway | $streams_ok ok, $streams_err errors, ${streams_s} s, aggregate ${streams_mibs} MiB/s (one stream: $(mibs "$(g gateway)")) | gateway VmHWM $gw_hwm_mib MiB | 0 errors, VmHWM < 512 MiB | $streams_ok_verdict |"
echo "| GetServer warm p50 / p99 | $gs_p50 ms / $gs_p99 ms | | p50 < 5 ms | $(verdict "$gs_p50" "<" 5) |"
echo "| GetServer cold (agent spawn) p50 | $gs_cold ms | | < 500 ms | $(verdict "$gs_cold" "<" 500) |"
[ ${#state_rows[@]} -gt 0 ] && printf '%s\n' "${state_rows[@]}" || echo "| state store rows | skipped (RBS_BENCH_SKIP_STATE=1) | | | |"
[ ${#sync_rows[@]} -gt 0 ] && printf '%s\n' "${sync_rows[@]}" || echo "| workspace sync rows | skipped (RBS_BENCH_SKIP_SYNC=1) | | | |"
