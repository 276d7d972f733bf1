#!/usr/bin/env bash
# The 1 GiB stdout case on its own, A/B: `jbazel run //bench:blast` in direct mode with a baseline build (BASE,
# another artifacts dir) and with this tree's build, interleaved with `ssh localhost bazel run` (the target's
# reference), then a breakdown of one run per build: CPU seconds per GiB of jbazel and of the agent, and their
# syscalls (strace -c). Not a test; never asserts times.
# Usage: bash bench/stream.sh BASE_ARTIFACTS_DIR
#   RBS_STREAM_RUNS (default 5): interleaved runs per command; RBS_STREAM_BREAKDOWN=0 skips the breakdown.
source "$(dirname "${BASH_SOURCE[0]}")/../e2e/lib.sh"
BENCH_DIR="$REPO_ROOT/bench"
BASE="$(cd "${1:?usage: bench/stream.sh BASE_ARTIFACTS_DIR}" && pwd)"
RUNS="${RBS_STREAM_RUNS:-5}"
source "$BENCH_DIR/lib.sh"
install_bench_tools
machine_state
build_artifacts
bench_tool

E2E_TMP="$(mktemp -d /tmp/rbs-stream.XXXXXX)"
for w in ssh a b; do bench_workspace "$E2E_TMP/ws-$w"; done
# The agents' bazel servers too: an agent stopped by SIGTERM leaves the server of its workspace running.
CLEANUP_CMDS+=("cd '$E2E_TMP/ws-ssh' && bazel shutdown" "kill_build_agents" "cd '$E2E_TMP/ws-a' && bazel shutdown" "cd '$E2E_TMP/ws-b' && bazel shutdown")
TARGET="//bench:blast"

start_private_sshd

# One orchestrator per build, each spawning its own build's agent.
start_build_orchestrator a "$BASE"
start_build_orchestrator b "$RBS_ARTIFACTS"
JB_A="$BASE/jbazel/jbazel --rbs_orchestrator=${BUILD_ORCHESTRATOR[a]}"
JB_B="$RBS_ARTIFACTS/jbazel/jbazel --rbs_orchestrator=${BUILD_ORCHESTRATOR[b]}"

$SSH "cd '$E2E_TMP/ws-ssh' && bazel build $TARGET" >/dev/null 2>&1
(cd "$E2E_TMP/ws-a" && $JB_A build "$TARGET" >/dev/null 2>&1)
(cd "$E2E_TMP/ws-b" && $JB_B build "$TARGET" >/dev/null 2>&1)

log "1 GiB stdout, $RUNS interleaved runs each (load $(cut -d' ' -f1-3 /proc/loadavg))"
out="$(interleave gib "$RUNS" 1 \
    "base=cd $E2E_TMP/ws-a && $JB_A run $TARGET 2>/dev/null >/dev/null" \
    "new=cd $E2E_TMP/ws-b && $JB_B run $TARGET 2>/dev/null >/dev/null" \
    "ssh=$SSH 'cd $E2E_TMP/ws-ssh && bazel run $TARGET 2>/dev/null' >/dev/null")"
echo "$out"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
m() { field "$out" "$1" median; }
awk -v b="$(m base)" -v n="$(m new)" -v s="$(m ssh)" 'BEGIN {
    printf "median s: base %.2f  new %.2f  ssh %.2f | MiB/s: base %.0f  new %.0f  ssh %.0f | vs ssh: base %.2fx  new %.2fx | new/base speedup %.2fx\n",
        b, n, s, 1024 / b, 1024 / n, 1024 / s, s / b, s / n, b / n }'

[ "${RBS_STREAM_BREAKDOWN:-1}" = 1 ] || exit 0

agent_pid() { jq -r .pid "$E2E_TMP"/state-"$1"/agents/*.json | head -1; }
tck="$(getconf CLK_TCK)"
for build in a b; do
    jb="JB_${build^^}"; jb="${!jb}"; apid="$(agent_pid "$build")"
    # CPU: agent from /proc before/after, jbazel from /usr/bin/time.
    before="$(cpu_ticks "$apid")"
    (cd "$E2E_TMP/ws-$build" && /usr/bin/time -f "%U %S %e" -o "$E2E_TMP/time-$build" $jb run "$TARGET" 2>/dev/null >/dev/null)
    after="$(cpu_ticks "$apid")"
    read -r ju js je <"$E2E_TMP/time-$build"
    awk -v b="$build" -v ju="$ju" -v js="$js" -v je="$je" -v a="$(( after - before ))" -v t="$tck" 'BEGIN {
        printf "%s: wall %.2f s; CPU-s per GiB: jbazel %.2f (user %.2f sys %.2f), agent %.2f\n", b, je, ju + js, ju, js, a / t }'
    # Syscalls: strace -c on the agent (attached) and on jbazel (traced from exec), one run.
    strace -c -f -p "$apid" -o "$E2E_TMP/strace-agent-$build" &
    spid=$!
    sleep 0.5
    (cd "$E2E_TMP/ws-$build" && strace -c -f -o "$E2E_TMP/strace-jbazel-$build" $jb run "$TARGET" 2>/dev/null >/dev/null)
    kill -INT "$spid"; wait "$spid" || true
    for who in agent jbazel; do
        echo "$build $who syscalls (top 8):"
        sed -n '3,10p' "$E2E_TMP/strace-$who-$build"
        grep total "$E2E_TMP/strace-$who-$build"
    done
done
