#!/usr/bin/env bash
# The 1 GiB `jbazel run //bench:blast` direct and via the gateway (tunnel), interleaved RBS_CORES_ROUNDS (default 4)
# times on one stack, with the whole machine's CPU for each run (/proc/stat: user, nice, system, irq, softirq):
# how many of the cores each path keeps busy, and the machine's CPU-seconds per GiB, so what the gateway's hops add
# shows wherever it is charged (a process, softirq, a kworker). With bench/relay-floor.sh, the figures behind the
# "1 GiB via the gateway" row (bench/README.md, ninth round). Not a test; never asserts times.
# Usage: bash bench/stream-cores.sh
source "$(dirname "${BASH_SOURCE[0]}")/../e2e/lib.sh"
BENCH_DIR="$REPO_ROOT/bench"
source "$BENCH_DIR/lib.sh"
ROUNDS="${RBS_CORES_ROUNDS:-4}"
machine_state
build_artifacts

E2E_TMP="$(mktemp -d /tmp/rbs-cores.XXXXXX)"
WS="$E2E_TMP/ws"
bench_workspace "$WS"
TARGET="//bench:blast"
start_gateway_stack
CLEANUP_CMDS+=("kill_agents" "cd '$WS' && bazel shutdown")
JB_DIRECT="$RBS_ARTIFACTS/jbazel/jbazel --rbs_orchestrator=$RBS_ORCHESTRATOR"
JB_TUNNEL="$RBS_ARTIFACTS/jbazel/jbazel --rbs_connect=tunnel --rbs_orchestrator=http://127.0.0.1:$GW_PUBLIC_PORT"
# Warm: the build, then one run each way.
(cd "$WS" && $JB_DIRECT build "$TARGET" >/dev/null 2>&1 && $JB_DIRECT run "$TARGET" 2>/dev/null >/dev/null \
    && $JB_TUNNEL run "$TARGET" 2>/dev/null >/dev/null)

hz="$(getconf CLK_TCK)"
for _ in $(seq 1 "$ROUNDS"); do
    for mode in direct tunnel; do
        jb="$JB_DIRECT"; [ "$mode" = tunnel ] && jb="$JB_TUNNEL"
        c0="$(machine_ticks)"; t0="$(date +%s%N)"
        (cd "$WS" && $jb run "$TARGET" 2>/dev/null >/dev/null)
        t1="$(date +%s%N)"; c1="$(machine_ticks)"
        awk -v m="$mode" -v t="$((t1 - t0))" -v c="$((c1 - c0))" -v hz="$hz" 'BEGIN { w = t / 1e9; s = c / hz
            printf "%s %.0f %.2f %.2f\n", m, 1024 / w, s / w, s }'
    done
done | tee "$E2E_TMP/runs" | awk '{ printf "  %-7s %5d MiB/s  %.2f cores busy  %.2f CPU-s per GiB (whole machine)\n", $1, $2, $3, $4 }'
med() { awk -v m="$1" -v f="$2" '$1 == m { print $f }' "$E2E_TMP/runs" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
for mode in direct tunnel; do
    echo "| 1 GiB jbazel run, $mode | $(med "$mode" 2) MiB/s | $(med "$mode" 3) cores busy | $(med "$mode" 4) CPU-s per GiB (whole machine) |"
done
