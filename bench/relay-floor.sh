#!/usr/bin/env bash
# What the cheapest possible relay adds to the machine's CPU (issue 12, the "1 GiB via the gateway" row): RBS_FLOOR_GIB
# (default 4) GiB from a bulk TCP source to a sink, straight (one loopback hop) and through a C splice(2) relay (two
# hops, nothing copied into user space), interleaved RBS_FLOOR_ROUNDS (default 3) times. Each run's CPU is the whole
# machine's (/proc/stat: user, nice, system, irq, softirq), so work moved between processes or into softirq counts.
# The tools are compiled from bench/tools/relay-floor into a temporary directory. Not a test; never asserts times.
# Usage: bash bench/relay-floor.sh   (needs gcc)
source "$(dirname "${BASH_SOURCE[0]}")/../e2e/lib.sh"
BENCH_DIR="$REPO_ROOT/bench"
source "$BENCH_DIR/lib.sh"
SRC="$BENCH_DIR/tools/relay-floor"
GIB="${RBS_FLOOR_GIB:-4}"; ROUNDS="${RBS_FLOOR_ROUNDS:-3}"
BYTES=$((GIB * 1073741824))
E2E_TMP="$(mktemp -d /tmp/rbs-relay-floor.XXXXXX)"
command -v gcc >/dev/null || { log "relay-floor: gcc is needed (apt-get install gcc)"; exit 1; }
gcc -O2 -o "$E2E_TMP/ends" "$SRC/ends.c"
gcc -O2 -o "$E2E_TMP/splice-relay" "$SRC/splice-relay.c"

wait_ready() { for _ in $(seq 1 500); do grep -q ready "$1" 2>/dev/null && return 0; sleep 0.01; done; log "relay-floor: $1 never got ready"; exit 1; }

# one MODE: prints "MODE MiB/s CPU-s-per-GiB"
one() {
    local mode="$1" sink_port relay_port dst t0 t1 c0 c1 sink relay=""
    sink_port="$(free_port)"; relay_port="$(free_port)"
    "$E2E_TMP/ends" sink "$sink_port" "$BYTES" >"$E2E_TMP/sink.out" & sink=$!; CLEANUP_PIDS+=("$sink")
    wait_ready "$E2E_TMP/sink.out"
    dst="$sink_port"
    if [ "$mode" = splice-relay ]; then
        "$E2E_TMP/splice-relay" "$relay_port" "$sink_port" >"$E2E_TMP/relay.out" & relay=$!; CLEANUP_PIDS+=("$relay")
        wait_ready "$E2E_TMP/relay.out"
        dst="$relay_port"
    fi
    c0="$(machine_ticks)"; t0="$(date +%s%N)"
    "$E2E_TMP/ends" src "$dst" "$BYTES"
    wait "$sink"
    t1="$(date +%s%N)"; c1="$(machine_ticks)"
    [ -z "$relay" ] || wait "$relay"
    awk -v m="$mode" -v n="$BYTES" -v t="$((t1 - t0))" -v c="$((c1 - c0))" -v hz="$(getconf CLK_TCK)" \
        'BEGIN { g = n / 1073741824; printf "%s %.0f %.2f\n", m, n / 1048576 / (t / 1e9), c / hz / g }'
}

machine_state
log "$GIB GiB per run, $ROUNDS rounds"
# Not in a pipeline: the runs' processes stay in this shell's CLEANUP_PIDS.
for _ in $(seq 1 "$ROUNDS"); do one direct; one splice-relay; done >"$E2E_TMP/runs"
awk '{ printf "  %-13s %6d MiB/s  %.2f CPU-s per GiB (whole machine)\n", $1, $2, $3 }' "$E2E_TMP/runs"
awk '{ c[$1] = c[$1] " " $3 } END { for (m in c) print m c[m] }' "$E2E_TMP/runs" | sort | while read -r mode values; do
    echo "| $mode | $(tr ' ' '\n' <<<"$values" | sort -n | awk '{ v[NR] = $1 } END { printf "%.2f (%.2f-%.2f)", v[int((NR + 1) / 2)], v[1], v[NR] }') CPU-s per GiB, median (range) |"
done
