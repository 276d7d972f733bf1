#!/usr/bin/env bash
# What the cheapest possible relay adds to the machine's CPU (issue 12, the "1 GiB via the gateway" row): RBS_FLOOR_GIB
# (default 4) GiB from a bulk TCP source to a sink, straight (one loopback hop) and through a C splice(2) relay (two
# hops, nothing copied into user space), interleaved RBS_FLOOR_ROUNDS (default 3) times. Each run's CPU is the whole
# machine's (/proc/stat: user, nice, system, irq, softirq), so work moved between processes or into softirq counts.
# The tools are compiled from bench/tools/relay-floor into a temporary directory. Not a test; never asserts times.
# Usage: bash bench/relay-floor.sh   (needs gcc)
set -euo pipefail
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/tools/relay-floor"
GIB="${RBS_FLOOR_GIB:-4}"; ROUNDS="${RBS_FLOOR_ROUNDS:-3}"
BYTES=$((GIB * 1073741824))
TMP="$(mktemp -d /tmp/rbs-relay-floor.XXXXXX)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT
command -v gcc >/dev/null || { echo "relay-floor: gcc is needed (apt-get install gcc)" >&2; exit 1; }
gcc -O2 -o "$TMP/ends" "$SRC/ends.c"
gcc -O2 -o "$TMP/splice-relay" "$SRC/splice-relay.c"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
busy() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
wait_ready() { for _ in $(seq 1 500); do grep -q ready "$1" 2>/dev/null && return 0; sleep 0.01; done; echo "relay-floor: $1 never got ready" >&2; exit 1; }

# one MODE: prints "MODE MiB/s CPU-s-per-GiB"
one() {
    local mode="$1" sink_port relay_port dst t0 t1 c0 c1 sink relay=""
    sink_port="$(free_port)"; relay_port="$(free_port)"
    "$TMP/ends" sink "$sink_port" "$BYTES" >"$TMP/sink.out" & sink=$!; PIDS+=("$sink")
    wait_ready "$TMP/sink.out"
    dst="$sink_port"
    if [ "$mode" = splice-relay ]; then
        "$TMP/splice-relay" "$relay_port" "$sink_port" >"$TMP/relay.out" & relay=$!; PIDS+=("$relay")
        wait_ready "$TMP/relay.out"
        dst="$relay_port"
    fi
    c0="$(busy)"; t0="$(date +%s%N)"
    "$TMP/ends" src "$dst" "$BYTES"
    wait "$sink"
    t1="$(date +%s%N)"; c1="$(busy)"
    [ -z "$relay" ] || wait "$relay"
    awk -v m="$mode" -v n="$BYTES" -v t="$((t1 - t0))" -v c="$((c1 - c0))" -v hz="$(getconf CLK_TCK)" \
        'BEGIN { g = n / 1073741824; printf "%s %.0f %.2f\n", m, n / 1048576 / (t / 1e9), c / hz / g }'
}

echo "load at start: $(cut -d' ' -f1-3 /proc/loadavg); $GIB GiB per run, $ROUNDS rounds"
for _ in $(seq 1 "$ROUNDS"); do one direct; one splice-relay; done | tee "$TMP/runs" | awk '{ printf "  %-13s %6d MiB/s  %.2f CPU-s per GiB (whole machine)\n", $1, $2, $3 }'
awk '{ c[$1] = c[$1] " " $3 } END { for (m in c) print m c[m] }' "$TMP/runs" | sort | while read -r mode values; do
    echo "| $mode | $(tr ' ' '\n' <<<"$values" | sort -n | awk '{ v[NR] = $1 } END { printf "%.2f (%.2f-%.2f)", v[int((NR + 1) / 2)], v[1], v[NR] }') CPU-s per GiB, median (range) |"
done
