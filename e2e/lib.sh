# Shared helpers for the e2e scripts. Source it; it sets strict mode and a cleanup trap.
#   RBS_ARTIFACTS  where the published binaries live (default: <repo>/artifacts); built when missing
#   RBS_E2E_KEEP=1 keep the temp dir (and the bazel output bases of its workspaces) for inspection
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

# dotnet's own build files go to $RBS_ARTIFACTS/dotnet/{bin,obj}/<project>/ (the SDK's artifacts layout) instead of
# <project>/bin and <project>/obj, so building and publishing leave nothing in the source tree.
DOTNET_LAYOUT=(-p:UseArtifactsOutput=true "-p:ArtifactsPath=$RBS_ARTIFACTS/dotnet")

# Publishes the executables once (framework-dependent; jbazel as Native AOT) into $RBS_ARTIFACTS.
build_artifacts() {
    if [ -x "$RBS_ARTIFACTS/rbs-orchestrator/rbs-orchestrator" ] && [ -x "$RBS_ARTIFACTS/rbs-agent/rbs-agent" ] \
        && [ -x "$RBS_ARTIFACTS/jbazel/jbazel" ] && [ -x "$RBS_ARTIFACTS/rbs-gateway/rbs-gateway" ] \
        && [ "${RBS_REBUILD:-0}" != 1 ]; then
        return 0
    fi
    log "publishing RBS into $RBS_ARTIFACTS (first run takes a minute or two)"
    local p
    for p in Orchestrator:rbs-orchestrator Gateway:rbs-gateway; do
        dotnet publish "$REPO_ROOT/${p%%:*}/${p%%:*}.csproj" -c Release -o "$RBS_ARTIFACTS/${p##*:}" -p:UseAppHost=true \
            "${DOTNET_LAYOUT[@]}" -nologo -v quiet >&2
    done
    # The agent for a runtime, so it is precompiled (ReadyToRun, Agent/Agent.csproj): a cold GetServer waits for it.
    dotnet publish "$REPO_ROOT/Agent/Agent.csproj" -c Release -r linux-x64 --self-contained false -o "$RBS_ARTIFACTS/rbs-agent" \
        -p:UseAppHost=true "${DOTNET_LAYOUT[@]}" -nologo -v quiet >&2
    dotnet publish "$REPO_ROOT/JBazel/JBazel.csproj" -c Release -r linux-x64 -o "$RBS_ARTIFACTS/jbazel" "${DOTNET_LAYOUT[@]}" \
        -nologo -v quiet >&2
}

JBAZEL() { "$RBS_ARTIFACTS/jbazel/jbazel" "$@"; }

# copy_workspace SRC DST: a copy of a workspace for a test run, without what a run leaves in a workspace —
# bazel's convenience symlinks (root-level bazel-*) and fetched outputs (root-level jbazel-out/) — so a test never
# starts from another run's state. (tar, not cp -r: cp has no excludes; rsync is not on every machine.)
copy_workspace() {
    local src="$1" dst="$2"
    mkdir -p "$dst"
    tar -C "$src" --anchored --exclude='./bazel-*' --exclude='./jbazel-out' -cf - . | tar -C "$dst" -xf -
}

# A free TCP port on 127.0.0.1 (the kernel's pick; a caller that loses the race to bind it retries).
free_port() { perl -MIO::Socket::INET -e 'print IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => 0, Listen => 1)->sockport, "\n"'; }

# bazel's output base of a workspace: <output user root>/<md5 of the workspace path> (bazel's own rule).
output_base_for() { printf '%s/%s\n' "$(bazel_user_root)" "$(printf '%s' "$1" | md5sum | cut -d' ' -f1)"; }
bazel_user_root() { printf '%s\n' "$HOME/.cache/bazel/_bazel_$(id -un)"; }

# forget_output_base DIR: deletes the output base a temporary workspace left under ~/.cache/bazel once its server is
# shut down (bazel makes parts of it read-only). Refuses anything that is not such an output base.
forget_output_base() {
    local dir="$1"
    [[ "$dir" == "$(bazel_user_root)"/* && "${dir##*/}" =~ ^[0-9a-f]{32}$ ]] || { log "not an output base, kept: $dir"; return 1; }
    [ -e "$dir" ] || return 0
    chmod -R u+w "$dir" 2>/dev/null || true
    rm -rf "$dir"
}

# Workspaces of this run that bazel builds in place (register them: RUN_WORKSPACES+=("$WS")); their output bases and
# those of every synced agent copy of the run are deleted on exit, once the servers are down.
declare -a RUN_WORKSPACES=()
run_output_bases() {
    local ws
    for ws in "${RUN_WORKSPACES[@]}" "$E2E_TMP"/state/workspaces/*/*/tree "$E2E_TMP"/state-*/workspaces/*/*/tree; do
        [ -d "$ws" ] && output_base_for "$ws"
    done
    return 0
}
forget_run_output_bases() {
    local ob
    for ob in $(run_output_bases); do forget_output_base "$ob" || true; done
}
# Output bases that still link into this run's temp dir (bazel's execroot links the workspace's top-level entries).
stale_output_bases() {
    find "$(bazel_user_root)" -mindepth 4 -maxdepth 4 -lname "$E2E_TMP/*" 2>/dev/null | sed 's|/execroot/.*||' | sort -u
}

# Runs on exit: kills what the script started, forgets the bazel output bases of its workspaces, then the temp dir.
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
    if [ -n "${E2E_TMP:-}" ] && [ "${RBS_E2E_KEEP:-0}" != 1 ]; then forget_run_output_bases; rm -rf "$E2E_TMP"; fi
    exit "$rc"
}
trap e2e_cleanup EXIT
trap 'exit 130' INT TERM

# Waits until a JSON ready file exists and prints one field of it (the fields: Shared/Hosting/ReadyFile.cs).
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

# Starts rbs-orchestrator --local-mode on an ephemeral port (or $ORCH_PORT); sets ORCH_PID and RBS_ORCHESTRATOR.
# Extra arguments go to the orchestrator.
start_orchestrator() {
    local state="$E2E_TMP/state"
    mkdir -p "$state"
    rm -f "$state/orchestrator.json"
    "$RBS_ARTIFACTS/rbs-orchestrator/rbs-orchestrator" --local-mode --port "${ORCH_PORT:-0}" \
        --state-path "$state/orchestrator.db" --ready-file "$state/orchestrator.json" \
        --agent-path "$RBS_ARTIFACTS/rbs-agent/rbs-agent" "$@" >>"$E2E_TMP/orchestrator.log" 2>&1 &
    ORCH_PID=$!
    CLEANUP_PIDS+=("$ORCH_PID")
    RBS_ORCHESTRATOR="$(wait_ready_file "$state/orchestrator.json" address "$ORCH_PID")" || return 1
    export RBS_ORCHESTRATOR
    log "orchestrator pid $ORCH_PID at $RBS_ORCHESTRATOR"
}

# start_gateway ORCHESTRATOR_URL: rbs-gateway on loopback, both endpoints on ephemeral ports, proxying GetServer to
# the orchestrator; sets GATEWAY_PID, GATEWAY_PUBLIC (jbazel's address) and GATEWAY_AGENT (the agents').
# Its token key is $E2E_TMP/token.key, created when missing; pass the same file to the orchestrator.
start_gateway() {
    local ready="$E2E_TMP/gateway.json"
    [ -s "$E2E_TMP/token.key" ] || { head -c 32 /dev/urandom | base64 >"$E2E_TMP/token.key"; chmod 600 "$E2E_TMP/token.key"; }
    rm -f "$ready"
    "$RBS_ARTIFACTS/rbs-gateway/rbs-gateway" --public-listen 127.0.0.1:0 --agent-listen 127.0.0.1:0 \
        --orchestrator "$1" --token-key-file "$E2E_TMP/token.key" --ready-file "$ready" >>"$E2E_TMP/gateway.log" 2>&1 &
    GATEWAY_PID=$!
    CLEANUP_PIDS+=("$GATEWAY_PID")
    GATEWAY_PUBLIC="$(wait_ready_file "$ready" publicAddress "$GATEWAY_PID")" || return 1
    GATEWAY_AGENT="$(jq -r .agentAddress "$ready")"
    log "gateway pid $GATEWAY_PID: public $GATEWAY_PUBLIC, agents $GATEWAY_AGENT"
}

stop_orchestrator() {
    kill -TERM "$ORCH_PID" 2>/dev/null || true
    wait "$ORCH_PID" 2>/dev/null || true
}

# write_nginx_conf DIR CLIENT_LISTEN AGENT_LISTEN "PUBLIC HOST:PORT..." "AGENT HOST:PORT...": DIR/nginx.conf for an nginx
# in front of gateway replicas, configured as helm/rbs/templates/ingress.yaml configures ingress-nginx: clients' gRPC
# over cleartext HTTP/2 (grpc_pass), agents' tunnels as HTTP/1.1 WebSocket upgrades, no body size limit or request
# buffering (sync uploads), hour-long timeouts (a build is one long stream), and no passive health checks
# (max_fails=0, ingress-nginx's upstream-max-fails default: with max_fails=1, one failed call while the other
# replica restarted left nginx with "no live upstreams" for 5 s). Run it in the foreground with
# `nginx -p DIR -c DIR/nginx.conf`: the pid started is nginx's master.
write_nginx_conf() {
    local dir="$1" client_listen="$2" agent_listen="$3" publics="$4" agents="$5" s
    mkdir -p "$dir/tmp"
    {
        printf 'daemon off;\nworker_processes 1;\nuser root;\npid %s/nginx.pid;\nerror_log %s/error.log info;\n' "$dir" "$dir"
        printf 'events { worker_connections 4096; }\nhttp {\n    access_log off;\n'
        for s in client_body proxy fastcgi uwsgi scgi; do printf '    %s_temp_path %s/tmp/%s;\n' "$s" "$dir" "$s"; done
        printf '    client_max_body_size 0;\n'
        printf '    map $http_upgrade $connection_upgrade { default upgrade; %s close; }\n' "''"
        printf '    upstream gateway_public {\n'
        for s in $publics; do printf '        server %s max_fails=0;\n' "$s"; done
        printf '        keepalive 16;\n    }\n    upstream gateway_agents {\n'
        for s in $agents; do printf '        server %s max_fails=0;\n' "$s"; done
        printf '    }\n'
        printf '    server {\n        listen %s http2;\n        http2_idle_timeout 1h;\n        client_body_timeout 1h;\n' "$client_listen"
        printf '        location / {\n            grpc_pass grpc://gateway_public;\n            grpc_read_timeout 1h;\n'
        printf '            grpc_send_timeout 1h;\n            grpc_next_upstream error timeout;\n        }\n    }\n'
        printf '    server {\n        listen %s;\n        location / {\n            proxy_pass http://gateway_agents;\n' "$agent_listen"
        printf '            proxy_http_version 1.1;\n            proxy_set_header Upgrade $http_upgrade;\n'
        printf '            proxy_set_header Connection $connection_upgrade;\n            proxy_set_header Host $host;\n'
        printf '            proxy_read_timeout 1h;\n            proxy_send_timeout 1h;\n            proxy_buffering off;\n'
        printf '            proxy_request_buffering off;\n        }\n    }\n}\n'
    } >"$dir/nginx.conf"
}

# Agents this run started (their ready files carry the pids), in every state dir of the run
# ($E2E_TMP/state, and $E2E_TMP/state-* of extra orchestrators, e.g. replicas on one database).
agent_pids() {
    local f
    # Ready files: in the agents directory, or with user isolation in each user's .agents directory.
    for f in "$E2E_TMP"/state/agents/*.json "$E2E_TMP"/state-*/agents/*.json "$E2E_TMP"/state/workspaces/*/.agents/*.json; do
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
