#!/usr/bin/env bash
# Where the CPU of the 1 GiB stdout case goes: one `jbazel run //bench:blast` (direct, or via the gateway with
# RBS_PROFILE_MODE=tunnel) under `perf record`, with the agent's JIT frames named (DOTNET_PerfMapEnabled), then the
# top symbols of jbazel, the agent (and the gateway), their CPU seconds per GiB, and the sizes of the stdout frames
# jbazel received (from its write(1) calls, traced in a second run). Not a test; never asserts times.
# Usage: bash bench/stream-profile.sh            RBS_PROFILE_MODE=direct|tunnel (default direct)
source "$(dirname "${BASH_SOURCE[0]}")/../e2e/lib.sh"
BENCH_DIR="$REPO_ROOT/bench"
MODE="${RBS_PROFILE_MODE:-direct}"
source "$BENCH_DIR/lib.sh"
machine_state
install_bench_tools
install_perf
build_artifacts

E2E_TMP="$(mktemp -d /tmp/rbs-profile.XXXXXX)"
WS="$E2E_TMP/ws"
bench_workspace "$WS"
TARGET="//bench:blast"
# The agents inherit the orchestrator's environment: their JIT-compiled frames get names in /tmp/perf-<pid>.map
# (W^X off: perf cannot name code it sees only through the double-mapped memfd).
export DOTNET_PerfMapEnabled=1 DOTNET_EnableWriteXorExecute=0
start_gateway_stack
unset DOTNET_PerfMapEnabled DOTNET_EnableWriteXorExecute
CLEANUP_CMDS+=("kill_agents" "cd '$WS' && bazel shutdown")
if [ "$MODE" = tunnel ]; then
    JB="$RBS_ARTIFACTS/jbazel/jbazel --rbs_connect=tunnel --rbs_orchestrator=http://127.0.0.1:$GW_PUBLIC_PORT"
else
    JB="$RBS_ARTIFACTS/jbazel/jbazel --rbs_orchestrator=$RBS_ORCHESTRATOR"
fi
(cd "$WS" && $JB build "$TARGET" >/dev/null 2>&1 && $JB run "$TARGET" 2>/dev/null >/dev/null)
apid="$(agent_pids | head -1)"
pids="$apid"; [ "$MODE" = tunnel ] && pids="$apid,$GW_PID"

tck="$(getconf CLK_TCK)"
a0="$(cpu_ticks "$apid")"; g0=0; [ "$MODE" = tunnel ] && g0="$(cpu_ticks "$GW_PID")"
(cd "$WS" && /usr/bin/time -f "%U %S %e" -o "$E2E_TMP/time" $JB run "$TARGET" 2>/dev/null >/dev/null)
a1="$(cpu_ticks "$apid")"; g1=0; [ "$MODE" = tunnel ] && g1="$(cpu_ticks "$GW_PID")"
read -r ju js je <"$E2E_TMP/time"
awk -v mode="$MODE" -v ju="$ju" -v js="$js" -v je="$je" -v a="$((a1 - a0))" -v g="$((g1 - g0))" -v t="$tck" 'BEGIN {
    printf "%s: wall %.2f s (%.0f MiB/s); CPU-s per GiB: jbazel %.2f (user %.2f sys %.2f), agent %.2f, gateway %.2f\n",
        mode, je, 1024 / je, ju + js, ju, js, a / t, g / t }'

# Frame sizes as jbazel writes them to stdout (one write per stdout frame).
(cd "$WS" && strace -f -e trace=write -e signal=none -o "$E2E_TMP/writes" $JB run "$TARGET" 2>/dev/null >/dev/null)
awk '/write\(1,/ { n++; s += $NF; if ($NF < 16384) small++; else if ($NF < 65536) mid++; else big++ }
    END { printf "jbazel stdout writes: %d (avg %.0f bytes): <16 KiB %d, 16-64 KiB %d, >=64 KiB %d\n", n, s / n, small, mid, big }' "$E2E_TMP/writes"

# The agent's socket writes and pipe reads, their count and average size (strace attached for one run).
strace -f -qq -e trace=sendmsg,sendto,writev,read -e signal=none -p "$apid" -o "$E2E_TMP/agent-io" &
spid=$!
sleep 0.5
(cd "$WS" && $JB run "$TARGET" 2>/dev/null >/dev/null)
kill -INT "$spid"; wait "$spid" || true
# Per thread (the tool, head, is a thread of its own here too): the calls that moved at least 1 MiB.
awk '/ = [0-9]+$/ { split($2, c, "("); k = $1 " " c[1]; n[k]++; b[k] += $NF }
    END { for (k in n) if (b[k] >= 1048576) printf "agent thread %s: %d calls, %.0f MiB, avg %.0f bytes\n", k, n[k], b[k] / 1048576, b[k] / n[k] }' \
    "$E2E_TMP/agent-io" | sort -k3

# Syscalls and context switches per process for one run (perf stat counts tracepoints; cheap, unlike strace).
EVENTS="syscalls:sys_enter_read,syscalls:sys_enter_write,syscalls:sys_enter_sendmsg,syscalls:sys_enter_sendto,syscalls:sys_enter_recvfrom,syscalls:sys_enter_recvmsg,syscalls:sys_enter_poll,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_futex,syscalls:sys_enter_sched_yield,sched:sched_switch"
stat_pids=("agent:$apid"); [ "$MODE" = tunnel ] && stat_pids+=("gateway:$GW_PID")
spids=()
for sp in "${stat_pids[@]}"; do
    perf stat -x, -e "$EVENTS" -p "${sp#*:}" -o "$E2E_TMP/stat-${sp%%:*}" &
    spids+=("$!")
done
sleep 0.5
(cd "$WS" && perf stat -x, -e "$EVENTS" -o "$E2E_TMP/stat-jbazel" $JB run "$TARGET" 2>/dev/null >/dev/null)
for p in "${spids[@]}"; do kill -INT "$p"; wait "$p" || true; done
for who in jbazel agent gateway; do
    [ -f "$E2E_TMP/stat-$who" ] || continue
    awk -F, -v who="$who" '$3 ~ /:/ { sub(/.*:sys_enter_/, "", $3); sub(/.*:/, "", $3); line = line sprintf(" %s %s", $3, $1) }
        END { print who " per GiB:" line }' "$E2E_TMP/stat-$who"
done

# perf: the agent (and gateway) attached, jbazel from its exec.
perf record -q -g -p "$pids" -o "$E2E_TMP/perf-server.data" 2>/dev/null &
ppid=$!
sleep 0.5
(cd "$WS" && perf record -q -g -o "$E2E_TMP/perf-jbazel.data" $JB run "$TARGET" 2>/dev/null >/dev/null)
kill -INT "$ppid"; wait "$ppid" || true
echo "jbazel, by shared object:"; perf_top "$E2E_TMP/perf-jbazel.data" dso 8
echo "jbazel, top symbols:"; perf_top "$E2E_TMP/perf-jbazel.data" sym 30
echo "agent$([ "$MODE" = tunnel ] && echo " and gateway"), by process and shared object:"; perf_top "$E2E_TMP/perf-server.data" comm,dso 12
echo "agent$([ "$MODE" = tunnel ] && echo " and gateway"), top symbols:"; perf_top "$E2E_TMP/perf-server.data" comm,sym 40

# Who calls the copies: the callers of memmove and memset in jbazel.
for f in __memmove_avx512_unaligned_erms __memset_avx512_unaligned_erms; do
    echo "jbazel, callers of $f:"
    { perf report -i "$E2E_TMP/perf-jbazel.data" --no-children --symbols "$f" -g caller,2,callee,function,percent --stdio 2>/dev/null || true; } |
        grep -v '^#' | grep -v '^$' | head -40 || true
done
