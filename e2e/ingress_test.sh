#!/usr/bin/env bash
# No build lost to the network: a real ingress (nginx from Debian) in front of two gateway replicas, and real faults.
#   cluster namespace: rbs-orchestrator, its rbs-agents, two rbs-gateway replicas (public and agent endpoints on
#                      loopback), nginx configured as helm/rbs configures ingress-nginx: gRPC over HTTP/2 for clients
#                      on the cluster side of a veth, WebSocket upgrades for the agents' tunnels on loopback
#   laptop namespace:  jbazel; it reaches only nginx
# Each fault hits a `jbazel run` that writes 4 MB to stdout (and a line every 0.8 s to stderr) over ~8 s:
#   kill -9 of the replica carrying the stream; the laptop's link down for 10 s; nginx restarted; a rolling restart
#   of every replica (SIGTERM, wait, start again, one after the other). Each time the exit code is bazel's and stdout
#   is byte-identical to the same run without a fault. Finally a replica killed for good leaves no agent unreachable.
# Prints a fault table (fault, exit code, bytes compared, extra seconds against the fault-free run).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ "$(id -u)" -eq 0 ] || { echo "ingress_test.sh needs root (network namespaces)" >&2; exit 1; }
bash "$REPO_ROOT/scripts/install-prereqs.sh"
command -v nginx >/dev/null || { echo "ingress_test.sh needs nginx (scripts/install-prereqs.sh installs it)" >&2; exit 1; }
build_artifacts

E2E_TMP="$(mktemp -d /tmp/rbs-ingress.XXXXXX)"
WS="$E2E_TMP/workspace"
copy_workspace "$E2E_DIR/workspace" "$WS"
# The faults' target, only in this run's copy (the bundled example stays as it is): numbered lines, paced, so a fault
# lands mid-stream; the exit code is the first argument.
mkdir -p "$WS/ingress"
cat >"$WS/ingress/BUILD" <<'EOF'
sh_binary(
    name = "stream",
    srcs = ["stream.sh"],
)
EOF
cat >"$WS/ingress/stream.sh" <<'EOF'
#!/usr/bin/env bash
# 40 steps of 1000 lines of 100 bytes (4,000,000 bytes) on stdout, 0.2 s apart; one line per 4 steps on stderr.
for step in $(seq 1 40); do
    awk -v s="$step" 'BEGIN { for (j = 0; j < 1000; j++) printf "%05d-%04d %088d\n", s, j, s * 1000 + j }'
    [ $((step % 4)) -eq 0 ] && echo "stream: step $step of 40" >&2
    sleep 0.2
done
exit "${1:-0}"
EOF
chmod +x "$WS/ingress/stream.sh"

ID="$$"
NS_C="rbs-icluster-$ID"
NS_L="rbs-ilaptop-$ID"
SUBNET="10.251.$((ID % 250)).0"
CLUSTER_IP="${SUBNET%.0}.1"
LAPTOP_IP="${SUBNET%.0}.2"
LAPTOP_LINK="rbsil$ID"
INGRESS_PUBLIC="http://$CLUSTER_IP:8080"
INGRESS_AGENTS="http://127.0.0.1:8090"
ORCH_DIRECT="http://127.0.0.1:50051"

# --- the network: two namespaces joined by one veth pair, no default route anywhere ---------------------
ip netns add "$NS_C"
ip netns add "$NS_L"
CLEANUP_CMDS+=("ip netns del '$NS_C'" "ip netns del '$NS_L'")
ip link add "rbsic$ID" type veth peer name "$LAPTOP_LINK"
ip link set "rbsic$ID" netns "$NS_C"
ip link set "$LAPTOP_LINK" netns "$NS_L"
ip -n "$NS_C" addr add "$CLUSTER_IP/30" dev "rbsic$ID"
ip -n "$NS_L" addr add "$LAPTOP_IP/30" dev "$LAPTOP_LINK"
for ns in "$NS_C" "$NS_L"; do ip -n "$ns" link set lo up; done
ip -n "$NS_C" link set "rbsic$ID" up
ip -n "$NS_L" link set "$LAPTOP_LINK" up
log "cluster namespace $NS_C ($CLUSTER_IP), laptop namespace $NS_L ($LAPTOP_IP)"

KEY_FILE="$E2E_TMP/token.key"
head -c 32 /dev/urandom | base64 >"$KEY_FILE"
chmod 600 "$KEY_FILE"

# --- two gateway replicas: replica N serves clients on 127.0.0.1:818N and agents on 127.0.0.1:828N -----------
declare -A REPLICA_PID
start_replica() {
    local n="$1" ready="$E2E_TMP/gateway-$1.json"
    rm -f "$ready"
    ip netns exec "$NS_C" "$RBS_ARTIFACTS/rbs-gateway/rbs-gateway" \
        --public-listen "127.0.0.1:818$n" --agent-listen "127.0.0.1:828$n" \
        --advertise-agent-address "http://127.0.0.1:828$n" --replica-id "replica-$n" \
        --orchestrator "$ORCH_DIRECT" --token-key-file "$KEY_FILE" --ready-file "$ready" \
        >>"$E2E_TMP/gateway-$n.log" 2>&1 &
    REPLICA_PID[$n]=$!
    CLEANUP_PIDS+=("$!")
    wait_ready_file "$ready" publicAddress "${REPLICA_PID[$n]}" >/dev/null || return 1
    log "gateway replica $n: pid ${REPLICA_PID[$n]}"
}
stop_replica() { # stop_replica N SIGNAL: signal it and wait until it is gone (SIGTERM drains first)
    local n="$1" pid="${REPLICA_PID[$1]}"
    kill "-$2" "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# --- nginx, as the chart's ingress-nginx: h2c gRPC for clients, HTTP/1.1 + Upgrade for tunnels -------------
NGINX_DIR="$E2E_TMP/nginx"
write_nginx_conf "$NGINX_DIR" "$CLUSTER_IP:8080" 127.0.0.1:8090 "127.0.0.1:8181 127.0.0.1:8182" "127.0.0.1:8281 127.0.0.1:8282"
NGINX_PID=""
start_nginx() {
    ip netns exec "$NS_C" nginx -p "$NGINX_DIR" -c "$NGINX_DIR/nginx.conf" >>"$NGINX_DIR/stdout.log" 2>&1 &
    NGINX_PID=$!
    CLEANUP_PIDS+=("$NGINX_PID")
    for _ in $(seq 100); do
        ip netns exec "$NS_C" bash -c "exec 3<>/dev/tcp/$CLUSTER_IP/8080" 2>/dev/null && break
        sleep 0.1
    done
    log "nginx pid $NGINX_PID"
}
stop_nginx() { kill -TERM "$NGINX_PID" 2>/dev/null || true; wait "$NGINX_PID" 2>/dev/null || true; }

# --- the cluster: orchestrator first (the replicas ask it about agents), then the replicas and nginx ---------------
mkdir -p "$E2E_TMP/state"
ip netns exec "$NS_C" "$RBS_ARTIFACTS/rbs-orchestrator/rbs-orchestrator" --local-mode --port 50051 \
    --state-path "$E2E_TMP/state/orchestrator.db" --ready-file "$E2E_TMP/state/orchestrator.json" \
    --agent-path "$RBS_ARTIFACTS/rbs-agent/rbs-agent" \
    --gateway-public-address "$INGRESS_PUBLIC" --gateway-agent-address "$INGRESS_AGENTS" --token-key-file "$KEY_FILE" \
    >>"$E2E_TMP/orchestrator.log" 2>&1 &
ORCH_PID=$!
CLEANUP_PIDS+=("$ORCH_PID")
wait_ready_file "$E2E_TMP/state/orchestrator.json" address "$ORCH_PID" >/dev/null
start_replica 1
start_replica 2
start_nginx
CLEANUP_CMDS=("cd '$WS' && ip netns exec '$NS_C' '$RBS_ARTIFACTS/jbazel/jbazel' --rbs_orchestrator=$ORCH_DIRECT --rbs_connect=direct --rbs_sync shutdown" "kill_agents" "${CLEANUP_CMDS[@]}")

# jb NAME ARGS...: jbazel from the laptop through nginx; output into $E2E_TMP/NAME.{out,err,rc}
JB=(--rbs_orchestrator="$INGRESS_PUBLIC" --rbs_connect=tunnel --rbs_status=always)
jb() {
    local name="$1"; shift
    set +e
    (cd "$WS" && ip netns exec "$NS_L" "$RBS_ARTIFACTS/jbazel/jbazel" "${JB[@]}" "$@" \
        >"$E2E_TMP/$name.out" 2>"$E2E_TMP/$name.err" </dev/null)
    echo $? >"$E2E_TMP/$name.rc"
    set -e
    log "[laptop] jbazel $* → exit $(cat "$E2E_TMP/$name.rc")"
}
rc_of() { cat "$E2E_TMP/$1.rc" 2>/dev/null; }
tcp_open() { ip netns exec "$1" timeout 3 bash -c "exec 3<>/dev/tcp/$2/$3" 2>/dev/null; }
not() { ! "$@"; }

# --- item 1: the laptop reaches only nginx, and builds through it ------------------------------------------
check "laptop: nginx's client port is reachable" tcp_open "$NS_L" "$CLUSTER_IP" 8080
check "laptop: nginx's tunnel port is not (it listens on the cluster's loopback)" not tcp_open "$NS_L" "$CLUSTER_IP" 8090
check "laptop: no gateway replica is reachable directly" not tcp_open "$NS_L" "$CLUSTER_IP" 8181
check "laptop: the orchestrator is not reachable directly" not tcp_open "$NS_L" "$CLUSTER_IP" 50051
jb build build //...
check "laptop: jbazel build //... through nginx and the replicas exits 0" test "$(rc_of build)" = 0
check "laptop: bazel's output came back through nginx" grep -q "Build completed successfully" "$E2E_TMP/build.err"
jb test_run test //lib:greet_test
check "laptop: jbazel test through nginx exits 0" test "$(rc_of test_run)" = 0

# --- the reference: the stream target without faults ---------------------------------------------------------
jb stream_warm run //ingress:stream -- 0
REF_START=$(date +%s.%N)
jb reference run //ingress:stream -- 3
REF_SECONDS=$(awk -v a="$(date +%s.%N)" -v b="$REF_START" 'BEGIN { printf "%.1f", a - b }')
REF_RC="$(rc_of reference)"
REF_BYTES=$(stat -c %s "$E2E_TMP/reference.out")
check "reference run: bazel run's exit code is the program's (3)" test "$REF_RC" = 3
check "reference run: 4,000,000 bytes of stdout" test "$REF_BYTES" = 4000000
log "reference: exit $REF_RC, $REF_BYTES bytes, ${REF_SECONDS} s"

# jbazel's own status lines (GetServer, sync); any other rbs: line is an error or a notice. Exact, so that an error
# such as "rbs: workspace sync to agent ... failed" is never taken for one.
STATUS_LINES='^rbs: agent [^ ]+ \(.*\) (warm|cold) in [0-9]+ ms(, trace [0-9a-f]{32})?$|^rbs: dashboard https?://[^ ]+/dashboard/invocations/[^ ]+$|^rbs: workspace up to date \(|^rbs: synced [0-9]'

# carrier: the replica whose log shows the most ExecuteCommand streams since the mark (where the running one is).
declare -A MARK
mark_replicas() { local n; for n in 1 2; do MARK[$n]=$(grep -c "rbs.v1.Agent/ExecuteCommand" "$E2E_TMP/gateway-$n.log" 2>/dev/null || true); done; }
carrier() {
    local n best=1 most=-1 now
    for n in 1 2; do
        now=$(grep -c "rbs.v1.Agent/ExecuteCommand" "$E2E_TMP/gateway-$n.log" 2>/dev/null || true)
        if [ $((now - ${MARK[$n]:-0})) -gt "$most" ]; then most=$((now - ${MARK[$n]:-0})); best=$n; fi
    done
    echo "$best"
}

# faulted NAME DESCRIPTION FAULT_FUNCTION: the stream target with a fault once 1 MB of stdout has arrived.
FAULT_ROWS=()
faulted() {
    local name="$1" what="$2" fault="$3" start rc bytes extra same reattached
    mark_replicas
    start=$(date +%s.%N)
    jb "$name" run //ingress:stream -- 3 &
    local runner=$!
    for _ in $(seq 300); do
        [ "$(stat -c %s "$E2E_TMP/$name.out" 2>/dev/null || echo 0)" -ge 1000000 ] && break
        kill -0 "$runner" 2>/dev/null || break
        sleep 0.1
    done
    log "fault: $what"
    "$fault"
    wait "$runner"
    extra=$(awk -v a="$(date +%s.%N)" -v b="$start" -v r="$REF_SECONDS" 'BEGIN { printf "%.1f", a - b - r }')
    rc="$(rc_of "$name")"
    bytes=$(stat -c %s "$E2E_TMP/$name.out")
    same=no; cmp -s "$E2E_TMP/reference.out" "$E2E_TMP/$name.out" && same=yes
    reattached=$(grep -c "^rbs: .*reattached" "$E2E_TMP/$name.err" || true)
    check "$what: exit code is bazel's ($REF_RC)" test "$rc" = "$REF_RC"
    check "$what: stdout is byte-identical to the fault-free run" test "$same" = yes
    check "$what: stderr has no rbs: line but the reattach notice" \
        not grep -v "^rbs: .*reattached" <(grep "^rbs: " "$E2E_TMP/$name.err" | grep -v -E "$STATUS_LINES")
    log "$name: stderr's rbs: lines besides the status lines:"
    grep "^rbs: " "$E2E_TMP/$name.err" | grep -v -E "$STATUS_LINES" | head -5 >&2 || true
    FAULT_ROWS+=("| $what | $rc | $bytes of $REF_BYTES, identical: $same | $reattached | $extra |")
}

kill_carrier() { local n; n=$(carrier); log "replica $n carries the stream: kill -9"; stop_replica "$n" KILL; start_replica "$n"; }
cut_link() {
    ip -n "$NS_L" link set "$LAPTOP_LINK" down
    sleep 10
    ip -n "$NS_L" link set "$LAPTOP_LINK" up
    ip -n "$NS_L" addr replace "$LAPTOP_IP/30" dev "$LAPTOP_LINK"
}
restart_nginx() { stop_nginx; start_nginx; }
rolling_restart() { local n; for n in 1 2; do log "rolling restart: replica $n"; stop_replica "$n" TERM; start_replica "$n"; done; }

faulted kill9 "kill -9 of the replica carrying the stream" kill_carrier
faulted link "laptop link down for 10 s" cut_link
faulted nginx "nginx restarted mid-build" restart_nginx
faulted rolling "rolling restart of both replicas" rolling_restart

# --- 20 builds running continuously through a rolling restart of every replica: none fails -----------------------
# Twenty loops, each running `jbazel build //...` again and again until the restart is over (one agent, one bazel
# server: bazel runs them one at a time, the others wait for its lock, as they would locally).
STOP="$E2E_TMP/builders.stop"
builder() {
    local n="$1" i=0 rc
    set +e
    while [ ! -e "$STOP" ]; do
        i=$((i + 1))
        (cd "$WS" && ip netns exec "$NS_L" "$RBS_ARTIFACTS/jbazel/jbazel" "${JB[@]}" build //... \
            >/dev/null 2>"$E2E_TMP/builder-$n-$i.err" </dev/null)
        rc=$?
        echo "$rc" >>"$E2E_TMP/builder-$n.rcs"
        [ "$rc" = 0 ] && rm -f "$E2E_TMP/builder-$n-$i.err"
    done
}
BUILDERS=()
for n in $(seq 20); do builder "$n" & BUILDERS+=("$!"); done
# The restart starts once twenty builds have finished: every loop is running by then.
for _ in $(seq 600); do
    [ "$(cat "$E2E_TMP"/builder-*.rcs 2>/dev/null | wc -l)" -ge 20 ] && break
    sleep 0.5
done
ROLL_START=$(date +%s)
rolling_restart
touch "$STOP"
wait "${BUILDERS[@]}" || true
BUILDS=$(cat "$E2E_TMP"/builder-*.rcs | wc -l)
FAILED_BUILDS=$(cat "$E2E_TMP"/builder-*.rcs | awk '$1 != 0 {n++} END {print n + 0}')
log "rolling restart under load: $BUILDS builds, $FAILED_BUILDS failed, restart took $(( $(date +%s) - ROLL_START )) s"
[ "$FAILED_BUILDS" = 0 ] || { log "failed builds' rbs: lines, by count:"; cat "$E2E_TMP"/builder-*-*.err | grep "^rbs: " \
    | grep -v -E "$STATUS_LINES" | sed 's/[0-9a-f]\{8\}-[0-9a-f-]\{27\}/<id>/g' | sort | uniq -c | sort -rn | head -8 >&2 || true
    log "first failed build's stderr:"; tail -5 "$(ls "$E2E_TMP"/builder-*-*.err | head -n1)" >&2 || true; }
check "rolling restart while 20 builds run continuously: 0 of $BUILDS builds failed" test "$FAILED_BUILDS" = 0
FAULT_ROWS+=("| rolling restart of both replicas, 20 builds running continuously | 0 expected, $FAILED_BUILDS failed | $BUILDS builds | | |")

# --- a replica killed for good leaves no agent unreachable -----------------------------------------------------
stop_replica 2 KILL
jb after_loss build //...
check "one replica gone for good: the build still exits 0" test "$(rc_of after_loss)" = 0
jb after_loss_run run //ingress:stream -- 0
check "one replica gone for good: a run still streams every byte" test "$(stat -c %s "$E2E_TMP/after_loss_run.out")" = 4000000

echo
echo "| fault | exit code | stdout bytes | reattach lines | extra seconds vs fault-free (${REF_SECONDS%.*} s) |"
echo "|---|---|---|---|---|"
printf '%s\n' "${FAULT_ROWS[@]}"
echo
finish
