#!/usr/bin/env bash
# Side-by-side benchmarks, one run, one table of ratios (not part of the tests; never asserts times).
#   warm no-op build:  jbazel (direct)  vs  local bazel  vs  ssh localhost bazel
#   1 GiB stdout:      jbazel run       vs  ssh localhost bazel run  vs  local bazel run | pipe  (plus raw ssh cat / pipe)
#   GetServer:         warm p50/p99 and cold (agent spawn) p50
#   State store:       GetServer on SQLite vs PostgreSQL, allocation throughput of 1 vs 2 replicas (bench/state.sh)
# Usage: bash bench/run.sh   (installs openssh-server, hyperfine when missing; runs its own sshd on 127.0.0.1:2222)
source "$(dirname "${BASH_SOURCE[0]}")/../e2e/lib.sh"
BENCH_DIR="$REPO_ROOT/bench"
RUNS="${RBS_BENCH_RUNS:-15}"

bash "$REPO_ROOT/scripts/install-prereqs.sh"
if ! command -v hyperfine >/dev/null || [ ! -x /usr/sbin/sshd ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server openssh-client hyperfine >/dev/null
fi
build_artifacts
dotnet build "$BENCH_DIR/Rbs.Bench/Rbs.Bench.csproj" -c Release -o "$RBS_ARTIFACTS/rbs-bench" -nologo -v quiet >&2

E2E_TMP="$(mktemp -d /tmp/rbs-bench.XXXXXX)"
for w in local ssh jbazel; do cp -r "$BENCH_DIR/workspace" "$E2E_TMP/ws-$w"; done
CLEANUP_CMDS+=("cd '$E2E_TMP/ws-local' && bazel shutdown" "cd '$E2E_TMP/ws-ssh' && bazel shutdown"
    "cd '$E2E_TMP/ws-jbazel' && '$RBS_ARTIFACTS/jbazel/jbazel' shutdown" "kill_agents")

# A private sshd on loopback with key auth: the "ssh localhost" baseline people use today.
SSH_DIR="$E2E_TMP/ssh"; mkdir -p "$SSH_DIR"; chmod 700 "$SSH_DIR"
ssh-keygen -q -t ed25519 -N '' -f "$SSH_DIR/id" ; ssh-keygen -q -t ed25519 -N '' -f "$SSH_DIR/host"
cp "$SSH_DIR/id.pub" "$SSH_DIR/authorized_keys"
mkdir -p /run/sshd
cat >"$SSH_DIR/sshd_config" <<CFG
ListenAddress 127.0.0.1
Port 2222
HostKey $SSH_DIR/host
AuthorizedKeysFile $SSH_DIR/authorized_keys
PasswordAuthentication no
PermitRootLogin prohibit-password
StrictModes no
PidFile $SSH_DIR/sshd.pid
CFG
/usr/sbin/sshd -f "$SSH_DIR/sshd_config" -E "$SSH_DIR/sshd.log"
CLEANUP_CMDS+=("kill \$(cat '$SSH_DIR/sshd.pid')")
SSH="ssh -p 2222 -i $SSH_DIR/id -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o BatchMode=yes 127.0.0.1"
export SSH

start_orchestrator
export RBS_BIN="$RBS_ARTIFACTS/jbazel/jbazel"

# Warm everything once (bazel servers, agent, ssh host key).
(cd "$E2E_TMP/ws-local" && bazel build //app:noop >/dev/null 2>&1)
$SSH "cd '$E2E_TMP/ws-ssh' && bazel build //app:noop" >/dev/null 2>&1
(cd "$E2E_TMP/ws-jbazel" && "$RBS_BIN" build //app:noop >/dev/null 2>&1)

hf() { # hf NAME CMD...: hyperfine mean seconds of each command, in order
    local json="$E2E_TMP/$1.json"; shift
    hyperfine -N --warmup 3 --runs "$RUNS" --export-json "$json" "$@" >&2
    jq -r '.results[].mean' "$json"
}
hf_shell() {
    local json="$E2E_TMP/$1.json"; shift
    hyperfine --warmup 1 --runs "${RBS_BENCH_BIG_RUNS:-5}" --export-json "$json" "$@" >&2
    jq -r '.results[].mean' "$json"
}

log "warm no-op build"
mapfile -t noop < <(hf noop \
    "bash -c 'cd $E2E_TMP/ws-local && bazel build //app:noop'" \
    "bash -c 'cd $E2E_TMP/ws-jbazel && $RBS_BIN build //app:noop'" \
    "bash -c '$SSH \"cd $E2E_TMP/ws-ssh && bazel build //app:noop\"'")

log "1 GiB stdout"
(cd "$E2E_TMP/ws-local" && bazel build //bench:blast >/dev/null 2>&1)
$SSH "cd '$E2E_TMP/ws-ssh' && bazel build //bench:blast" >/dev/null 2>&1
(cd "$E2E_TMP/ws-jbazel" && "$RBS_BIN" build //bench:blast >/dev/null 2>&1)
mapfile -t gib < <(hf_shell gib \
    "cd $E2E_TMP/ws-local && bazel run //bench:blast 2>/dev/null | cat >/dev/null" \
    "cd $E2E_TMP/ws-jbazel && $RBS_BIN run //bench:blast 2>/dev/null >/dev/null" \
    "$SSH 'cd $E2E_TMP/ws-ssh && bazel run //bench:blast 2>/dev/null' >/dev/null" \
    "head -c 1073741824 /dev/zero | cat >/dev/null" \
    "$SSH 'head -c 1073741824 /dev/zero' >/dev/null")

log "GetServer latency"
read -r gs_p50 gs_p99 gs_cold < <("$RBS_ARTIFACTS/rbs-bench/rbs-bench" getserver "$RBS_ORCHESTRATOR" "$E2E_TMP/ws-jbazel" 2000 10)

log "state store: SQLite vs PostgreSQL, replicas"
mapfile -t state_rows < <(bash "$BENCH_DIR/state.sh")

ms() { awk -v s="$1" 'BEGIN { printf "%.1f ms", s * 1000 }'; }
mibs() { awk -v s="$1" 'BEGIN { printf "%.0f MiB/s", 1024 / s }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }

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
echo "| GetServer warm p50 / p99 | $gs_p50 ms / $gs_p99 ms | | < 5 ms |"
echo "| GetServer cold (agent spawn) p50 | $gs_cold ms | | < 500 ms |"
printf '%s\n' "${state_rows[@]}"
