#!/usr/bin/env bash
# Proves the VPC problem is solved, with real network isolation (root: ip netns).
#   cluster namespace: rbs-orchestrator (127.0.0.1), its rbs-agents (loopback + outbound tunnel), rbs-gateway
#                      (public endpoint on the cluster side of a veth, agent endpoint on loopback)
#   laptop namespace:  jbazel; it can reach only the gateway's public address
# Checks: (i) the laptop cannot dial agents (or the orchestrator) directly; (ii) `jbazel build //...` from the
# laptop works through the gateway with real bazel: the agent builds its own synced copy of the laptop's tree,
# an uncommitted edit included (git-ignored files and .git too: bazel can read them), and the outputs come back into jbazel-out/;
# (iii) direct mode works inside the cluster namespace;
# (iv) user B cannot reach user A's agent, forged/expired tokens are refused, a bad join token cannot register.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ "$(id -u)" -eq 0 ] || { echo "vpc_test.sh needs root (network namespaces)" >&2; exit 1; }
bash "$REPO_ROOT/scripts/install-prereqs.sh"
build_artifacts
dotnet build "$E2E_DIR/probe/Rbs.Probe.csproj" -c Release -o "$RBS_ARTIFACTS/rbs-probe" "${DOTNET_LAYOUT[@]}" -nologo -v quiet >&2
PROBE="$RBS_ARTIFACTS/rbs-probe/rbs-probe"

E2E_TMP="$(mktemp -d /tmp/rbs-vpc.XXXXXX)"
# Two users and a root orchestrator: each user's agents run under a uid of their own and must reach the state dir.
chmod 711 "$E2E_TMP"
WS="$E2E_TMP/workspace"
copy_workspace "$E2E_DIR/workspace" "$WS"
# The laptop's checkout: committed, plus a git-ignored local file (synced like everything bazel can read).
printf 'notes.local\n' >"$WS/.gitignore"
echo "private notes" >"$WS/notes.local"
git -C "$WS" init -q && git -C "$WS" add -A \
    && git -C "$WS" -c user.name=e2e -c user.email=e2e@localhost commit -q -m "laptop checkout"
ID="$$"
NS_C="rbs-cluster-$ID"
NS_L="rbs-laptop-$ID"
SUBNET="10.250.$((ID % 250)).0"
CLUSTER_IP="${SUBNET%.0}.1"
LAPTOP_IP="${SUBNET%.0}.2"
GATEWAY_PUBLIC="http://$CLUSTER_IP:8080"
GATEWAY_AGENT="http://127.0.0.1:8081"
ORCH_DIRECT="http://127.0.0.1:50051"

# --- the network: two namespaces joined by one veth pair, no default route anywhere ---------------------
ip netns add "$NS_C"
ip netns add "$NS_L"
CLEANUP_CMDS+=("ip netns del '$NS_C'" "ip netns del '$NS_L'")
ip link add "rbsc$ID" type veth peer name "rbsl$ID"
ip link set "rbsc$ID" netns "$NS_C"
ip link set "rbsl$ID" netns "$NS_L"
ip -n "$NS_C" addr add "$CLUSTER_IP/30" dev "rbsc$ID"
ip -n "$NS_L" addr add "$LAPTOP_IP/30" dev "rbsl$ID"
for ns in "$NS_C" "$NS_L"; do ip -n "$ns" link set lo up; done
ip -n "$NS_C" link set "rbsc$ID" up
ip -n "$NS_L" link set "rbsl$ID" up
C() { ip netns exec "$NS_C" "$@"; }
L() { ip netns exec "$NS_L" "$@"; }
log "cluster namespace $NS_C ($CLUSTER_IP), laptop namespace $NS_L ($LAPTOP_IP)"

# --- the cluster: gateway + orchestrator (process backend, API keys for two users) ------------------------
KEY_FILE="$E2E_TMP/token.key"
head -c 32 /dev/urandom | base64 >"$KEY_FILE"
chmod 600 "$KEY_FILE"
ALICE_KEY="alice-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
BOB_KEY="bob-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
mkdir -p "$E2E_TMP/state"
# The agents run under their users' uids: they need an agent binary other uids can reach, wherever this checkout is
# (a clone below /root, mode 0700, is not); a copy in the run's directory always is.
cp -r "$RBS_ARTIFACTS/rbs-agent" "$E2E_TMP/rbs-agent" && chmod -R go+rX "$E2E_TMP/rbs-agent"

# Started with `ip netns exec` directly (not through C): a backgrounded function would be a subshell whose pid
# is not the server's.
ip netns exec "$NS_C" "$RBS_ARTIFACTS/rbs-gateway/rbs-gateway" --public-listen "$CLUSTER_IP:8080" --agent-listen 127.0.0.1:8081 \
    --orchestrator "$ORCH_DIRECT" --token-key-file "$KEY_FILE" --ready-file "$E2E_TMP/gateway.json" \
    >>"$E2E_TMP/gateway.log" 2>&1 &
GATEWAY_PID=$!
CLEANUP_PIDS+=("$GATEWAY_PID")
wait_ready_file "$E2E_TMP/gateway.json" publicAddress "$GATEWAY_PID" >/dev/null

ip netns exec "$NS_C" env Orchestrator__ApiKeys__0__User=alice Orchestrator__ApiKeys__0__Key="$ALICE_KEY" \
    Orchestrator__ApiKeys__1__User=bob Orchestrator__ApiKeys__1__Key="$BOB_KEY" \
    "$RBS_ARTIFACTS/rbs-orchestrator/rbs-orchestrator" --local-mode --port 50051 \
    --state-path "$E2E_TMP/state/orchestrator.db" --ready-file "$E2E_TMP/state/orchestrator.json" \
    --agent-path "$E2E_TMP/rbs-agent/rbs-agent" \
    --gateway-public-address "$GATEWAY_PUBLIC" --gateway-agent-address "$GATEWAY_AGENT" --token-key-file "$KEY_FILE" \
    >>"$E2E_TMP/orchestrator.log" 2>&1 &
ORCH_PID=$!
CLEANUP_PIDS+=("$ORCH_PID")
wait_ready_file "$E2E_TMP/state/orchestrator.json" address "$ORCH_PID" >/dev/null
log "gateway pid $GATEWAY_PID, orchestrator pid $ORCH_PID"

# jb NAME NS ARGS...: jbazel in the workspace inside a namespace; output into $E2E_TMP/NAME.{out,err,rc}
jb() {
    local name="$1" ns="$2"; shift 2
    set +e
    (cd "$WS" && ip netns exec "$ns" "$RBS_ARTIFACTS/jbazel/jbazel" --rbs_status=always "$@" \
        >"$E2E_TMP/$name.out" 2>"$E2E_TMP/$name.err" </dev/null)
    echo $? >"$E2E_TMP/$name.rc"
    set -e
    log "[$ns] jbazel $* → exit $(cat "$E2E_TMP/$name.rc")"
}
rc_of() { cat "$E2E_TMP/$1.rc"; }
status_of() { grep -m1 '^rbs: agent ' "$E2E_TMP/$1.err" || true; }
agent_of() { status_of "$1" | awk '{print $3}'; }
temp_of() { status_of "$1" | awk '{print $6}'; }
AS_ALICE=(--rbs_orchestrator="$GATEWAY_PUBLIC" --rbs_connect=tunnel --rbs_api_key="$ALICE_KEY")
AS_BOB=(--rbs_orchestrator="$GATEWAY_PUBLIC" --rbs_connect=tunnel --rbs_api_key="$BOB_KEY")
CLEANUP_CMDS=("cd '$WS' && ip netns exec '$NS_C' '$RBS_ARTIFACTS/jbazel/jbazel' --rbs_orchestrator=$ORCH_DIRECT --rbs_connect=direct --rbs_sync --rbs_api_key=$ALICE_KEY shutdown" "cd '$WS' && ip netns exec '$NS_C' '$RBS_ARTIFACTS/jbazel/jbazel' --rbs_orchestrator=$ORCH_DIRECT --rbs_connect=direct --rbs_sync --rbs_api_key=$BOB_KEY shutdown" "kill_agents" "${CLEANUP_CMDS[@]}")

# tcp_open NS HOST PORT: can NS open a TCP connection to HOST:PORT (3 s)?
tcp_open() { ip netns exec "$1" timeout 3 bash -c "exec 3<>/dev/tcp/$2/$3" 2>/dev/null; }
not() { ! "$@"; }

# (ii) the laptop builds through the gateway, with real bazel, on a synced copy of its tree -----------------
jb laptop_build "$NS_L" "${AS_ALICE[@]}" --rbs_fetch_outputs build //...
check "laptop: jbazel build //... through the gateway exits 0" test "$(rc_of laptop_build)" = 0
check "laptop: bazel's output streamed back" grep -q "Build completed successfully" "$E2E_TMP/laptop_build.err"
check "laptop: the tree was synced to the agent first" grep -q "^rbs: synced " "$E2E_TMP/laptop_build.err"
ALICE_AGENT="$(agent_of laptop_build)"
AGENT_TREE="$(find "$E2E_TMP/state/workspaces/alice" -mindepth 2 -maxdepth 2 -type d -name tree | head -n1)"
log "alice's agent builds in $AGENT_TREE"
check "cluster: the agent builds its own copy, not the laptop's directory" test -n "$AGENT_TREE" -a -f "$AGENT_TREE/app/greeting.in" -a ! -e "$WS/bazel-bin"
# The sync carries what bazel can read: glob() sees git-ignored files, a status command runs git (docs/sync.md).
check "cluster: the git-ignored file reached the agent too (bazel's glob() reads it)" test -f "$AGENT_TREE/notes.local"
# (The tree belongs to alice's uid, so root's git needs safe.directory to look at it.)
check "cluster: .git came along: git on the agent sees the laptop's commit" \
    test "$(git -c safe.directory='*' -C "$AGENT_TREE" rev-parse HEAD 2>/dev/null)" = "$(git -C "$WS" rev-parse HEAD)"
check "laptop: the output came back into jbazel-out/" test "$(cat "$WS/jbazel-out/k8-fastbuild/bin/app/greeting.txt" 2>/dev/null)" = "HELLO FROM RBS"
echo "hello from an uncommitted edit" >"$WS/app/greeting.in"
check "laptop: the edit is uncommitted" test "$(git -C "$WS" status --porcelain --untracked-files=no)" = " M app/greeting.in"
jb laptop_again "$NS_L" "${AS_ALICE[@]}" --rbs_fetch_outputs build //...
check "laptop: second build exits 0" test "$(rc_of laptop_again)" = 0
check "laptop: second build reuses the warm agent" test "$(temp_of laptop_again)" = warm -a "$(agent_of laptop_again)" = "$ALICE_AGENT"
check "laptop: the uncommitted edit was built remotely and its output fetched" \
    test "$(cat "$WS/jbazel-out/k8-fastbuild/bin/app/greeting.txt" 2>/dev/null)" = "HELLO FROM AN UNCOMMITTED EDIT"
check "laptop: only the changed outputs were fetched" grep -q "^rbs: outputs: .*(2 changed" "$E2E_TMP/laptop_again.err"
jb laptop_fail "$NS_L" "${AS_ALICE[@]}" build //fail:fail
check "laptop: a failing target gives bazel's exit code 1 through the tunnel" test "$(rc_of laptop_fail)" = 1

# (i) nothing but the gateway's public address is reachable from the laptop ---------------------------------
# The orchestrator's own record of the agent (its ready file sits in the user's directory, where builds can write).
AGENT_ADDR="$(jq -r .address "$E2E_TMP/state/agents/$ALICE_AGENT.spec" 2>/dev/null || true)"
AGENT_PORT="${AGENT_ADDR##*:}"
log "alice's agent $ALICE_AGENT: $AGENT_ADDR inside the cluster namespace"
check "cluster: the agent's direct address works inside the cluster" tcp_open "$NS_C" 127.0.0.1 "$AGENT_PORT"
check "laptop: the agent's direct address is unreachable" not tcp_open "$NS_L" 127.0.0.1 "$AGENT_PORT"
check "laptop: the agent port on the cluster's address is unreachable" not tcp_open "$NS_L" "$CLUSTER_IP" "$AGENT_PORT"
check "laptop: the orchestrator is unreachable directly" not tcp_open "$NS_L" "$CLUSTER_IP" 50051
check "laptop: the gateway's agent endpoint is unreachable" not tcp_open "$NS_L" "$CLUSTER_IP" 8081
check "laptop: the gateway's public endpoint is reachable" tcp_open "$NS_L" "$CLUSTER_IP" 8080
jb laptop_direct "$NS_L" --rbs_orchestrator="$GATEWAY_PUBLIC" --rbs_connect=direct --rbs_api_key="$ALICE_KEY" build //...
check "laptop: direct mode cannot reach the agent (transient remote error 38)" test "$(rc_of laptop_direct)" = 38

# (iii) direct mode from inside the cluster: same user and repo → the same warm agent -----------------------
# (it asks for the synced copy: an in-place agent would be a different one, building the directory itself)
jb cluster_direct "$NS_C" --rbs_orchestrator="$ORCH_DIRECT" --rbs_connect=direct --rbs_sync --rbs_api_key="$ALICE_KEY" build //...
check "cluster: direct mode build exits 0" test "$(rc_of cluster_direct)" = 0
check "cluster: direct mode reuses alice's warm agent" test "$(agent_of cluster_direct)" = "$ALICE_AGENT" -a "$(temp_of cluster_direct)" = warm

# (iv) security -------------------------------------------------------------------------------------------
jb no_key "$NS_L" --rbs_orchestrator="$GATEWAY_PUBLIC" --rbs_connect=tunnel build //...
check "no API key: refused with exit 34" test "$(rc_of no_key)" = 34
check "no API key: the message says how to pass one" grep -q "rbs_api_key" "$E2E_TMP/no_key.err"
jb bad_key "$NS_L" --rbs_orchestrator="$GATEWAY_PUBLIC" --rbs_connect=tunnel --rbs_api_key=not-a-key build //...
check "wrong API key: refused with exit 34" test "$(rc_of bad_key)" = 34
jb bob_build "$NS_L" "${AS_BOB[@]}" build //app:noop
BOB_AGENT="$(agent_of bob_build)"
check "bob: builds through the gateway on his own agent" test "$(rc_of bob_build)" = 0 -a -n "$BOB_AGENT" -a "$BOB_AGENT" != "$ALICE_AGENT"
agent_uid() { awk '/^Uid:/ {print $2}' "/proc/$(jq -r .pid "$E2E_TMP/state/agents/$1.spec")/status" 2>/dev/null; }
ALICE_UID="$(agent_uid "$ALICE_AGENT")"; BOB_UID="$(agent_uid "$BOB_AGENT")"
log "agent uids: alice $ALICE_UID, bob $BOB_UID"
check "cluster: alice's and bob's agents run under uids of their own, not root" \
    test -n "$ALICE_UID" -a -n "$BOB_UID" -a "$ALICE_UID" != 0 -a "$BOB_UID" != 0 -a "$ALICE_UID" != "$BOB_UID"
check "cluster: alice's directory is closed to everyone but her uid" \
    test "$(stat -c '%a %u' "$E2E_TMP/state/workspaces/alice")" = "700 $ALICE_UID"

REPO_HASH="probe$ID"
probe() { ip netns exec "$NS_L" "$PROBE" "$@"; }
alice_json="$(probe getserver "$GATEWAY_PUBLIC" "$ALICE_KEY" "$WS" "$REPO_HASH" tunnel)"
bob_json="$(probe getserver "$GATEWAY_PUBLIC" "$BOB_KEY" "$WS" "$REPO_HASH" tunnel)"
A_ROUTE="$(jq -r .route <<<"$alice_json")"; A_TOKEN="$(jq -r .sessionToken <<<"$alice_json")"
B_TOKEN="$(jq -r .sessionToken <<<"$bob_json")"
log "probe agents: alice $A_ROUTE, bob $(jq -r .route <<<"$bob_json")"
check "alice's session token reaches alice's agent" probe status "$GATEWAY_PUBLIC" "$A_ROUTE" "$A_TOKEN"
out="$(probe status "$GATEWAY_PUBLIC" "$A_ROUTE" "$B_TOKEN" || true)"; log "bob → alice: $out"
check "bob's session token cannot reach alice's agent (PermissionDenied)" grep -q "^ERROR PermissionDenied" <<<"$out"
out="$(probe status "$GATEWAY_PUBLIC" "$A_ROUTE" - || true)"; log "no token: $out"
check "no session token is refused (Unauthenticated)" grep -q "^ERROR Unauthenticated" <<<"$out"
out="$(probe status "$GATEWAY_PUBLIC" "$A_ROUTE" "$(probe mint-random-key session "$A_ROUTE" alice)" || true)"; log "forged: $out"
check "a forged session token is refused (Unauthenticated)" grep -q "^ERROR Unauthenticated" <<<"$out"
out="$(probe status "$GATEWAY_PUBLIC" "$A_ROUTE" "$("$PROBE" mint "$KEY_FILE" session "$A_ROUTE" alice expired)" || true)"; log "expired: $out"
check "an expired session token is refused (Unauthenticated)" grep -q "^ERROR Unauthenticated" <<<"$out"
# Tamper with the signed payload (its first character), not the signature's last character: that one carries
# base64 padding bits, so some substitutions decode to the same signature bytes.
first="${A_TOKEN:0:1}"; [ "$first" = A ] && other=B || other=A
out="$(probe status "$GATEWAY_PUBLIC" "$A_ROUTE" "$other${A_TOKEN:1}" || true)"; log "tampered: $out"
check "a tampered session token is refused (Unauthenticated)" grep -q "^ERROR Unauthenticated" <<<"$out"

# An agent with a bad join token cannot register.
EVIL="aevil$ID"
for kind in forged expired; do
    if [ "$kind" = forged ]; then token="$("$PROBE" mint-random-key join "$EVIL" alice)"; else token="$("$PROBE" mint "$KEY_FILE" join "$EVIL" alice expired)"; fi
    set +e
    C timeout 60 "$RBS_ARTIFACTS/rbs-agent/rbs-agent" --agent-id "$EVIL" --workspace "$WS" --listen 127.0.0.1:0 \
        --gateway "$GATEWAY_AGENT" --join-token "$token" >"$E2E_TMP/evil-$kind.log" 2>&1
    evil_rc=$?
    set -e
    log "agent with a $kind join token exited $evil_rc"
    check "agent with a $kind join token gives up (rejected, not retrying forever)" test "$evil_rc" -ne 124
    out="$(probe status "$GATEWAY_PUBLIC" "$EVIL" "$("$PROBE" mint "$KEY_FILE" session "$EVIL" alice valid)" || true)"
    log "route to the $kind-token agent: $out"
    check "agent with a $kind join token is not registered (Unavailable)" grep -q "^ERROR Unavailable" <<<"$out"
done

# --- teardown: bazel server, agents, gateway, orchestrator, namespaces; nothing may be left ------------------
jb shutdown "$NS_C" --rbs_orchestrator="$ORCH_DIRECT" --rbs_connect=direct --rbs_sync --rbs_api_key="$ALICE_KEY" shutdown
# bob's agent builds its own copy too, so it has its own bazel server
jb bob_shutdown "$NS_L" "${AS_BOB[@]}" shutdown
kill_agents
for pid in "$ORCH_PID" "$GATEWAY_PID"; do kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
ip netns del "$NS_C"; ip netns del "$NS_L"
sleep 0.5
left="$(leftover_processes)"
[ -z "$left" ] || log "left behind: $left"
check "no process of this run left behind" test -z "$left"
check "no network namespace of this run left behind" not grep -q -- "-$ID\b" <<<"$(ip netns list)"
forget_run_output_bases
check "no bazel output base of this run left behind" test -z "$(stale_output_bases)"

finish
