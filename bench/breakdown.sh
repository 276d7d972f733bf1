#!/usr/bin/env bash
# Where the time of one warm no-op goes: `jbazel build //bench:noop` direct and through the gateway, and local
# `bazel build //bench:noop` (Debian's /usr/bin/bazel wrapper, as a user types it), each split into its phases.
# Not a test; never asserts times. Rerunnable: bash bench/breakdown.sh
#   RBS_BREAKDOWN_RUNS (default 10): traced runs of each command, interleaved (local, direct, gateway, local, ...)
#   RBS_ARTIFACTS: the binaries to measure (default <repo>/artifacts; built when missing)
#
# How: every run is traced with `strace -f --seccomp-bpf -ttt` on a handful of syscalls (execve, clone*, connect,
# exit_group: the seccomp filter stops only on those, so the other syscalls run at full speed), the agents run
# under the same strace (their orchestrator starts them through a small wrapper script), and jbazel writes
# wall-clock marks of its own phases when RBS_PHASE_TRACE names a file (off by default). All three use the same
# clock (CLOCK_REALTIME, microseconds), so one run's events line up across processes:
#   jbazel  execve --(process start)--> main --(settings, workspace)--> getserver --(GetServer)--> getserver-done
#           --> execute (start frame sent) ...
#   agent   ... spawn (clone VFORK) --(setpriv, wrapper)--> execve bazel-N --(client start)--> connect to its server
#           --(client <-> server)--> client exit_group ...
#   jbazel  ... execute-done (exit frame read) --(dispose)--> exit --(runtime shutdown)--> process gone
# Local bazel: execve /usr/bin/bazel --(wrapper)--> execve bazel-N --(client start)--> connect --(client <-> server)
#              --> exit_group --> process gone.
# Each phase is printed as the median over the runs (ms), with the untraced medians of the same commands
# (rbs-bench interleave) beside them, so strace's own cost is visible.
source "$(dirname "${BASH_SOURCE[0]}")/../e2e/lib.sh"
BENCH_DIR="$REPO_ROOT/bench"
RUNS="${RBS_BREAKDOWN_RUNS:-10}"
source "$BENCH_DIR/lib.sh"

command -v strace >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq strace >/dev/null; }
machine_state
build_artifacts
bench_tool

E2E_TMP="$(mktemp -d /tmp/rbs-breakdown.XXXXXX)"
TRACES="$E2E_TMP/traces"; mkdir -p "$TRACES"
for w in local jbazel gw; do bench_workspace "$E2E_TMP/ws-$w"; done
TARGET="//bench:noop"
SYSCALLS="execve,clone,clone3,vfork,connect,exit_group"
STRACE=(strace -f --seccomp-bpf -ttt -e "trace=$SYSCALLS")

# Agents under strace: -D keeps strace out of the way (the agent keeps its pid, strace is a grandchild).
AGENT_WRAPPER="$E2E_TMP/traced-agent"
cat >"$AGENT_WRAPPER" <<SH
#!/bin/sh
exec strace -D -f --seccomp-bpf -ttt -e trace=$SYSCALLS -o "$TRACES/agent-\$\$.txt" -- "$RBS_ARTIFACTS/rbs-agent/rbs-agent" "\$@"
SH
chmod +x "$AGENT_WRAPPER"

head -c 32 /dev/urandom | base64 >"$E2E_TMP/token.key"
GW_PUBLIC_PORT="$(free_port)"; GW_AGENT_PORT="$(free_port)"
GW_PUBLIC="http://127.0.0.1:$GW_PUBLIC_PORT"; GW_AGENT="http://127.0.0.1:$GW_AGENT_PORT"
CLEANUP_CMDS+=("cd '$E2E_TMP/ws-local' && bazel shutdown" "kill_agents")
start_orchestrator --gateway-public-address "$GW_PUBLIC" --gateway-agent-address "$GW_AGENT" --token-key-file "$E2E_TMP/token.key" \
    --default-connect-mode direct --agent-path "$AGENT_WRAPPER"
start_bench_gateway "$GW_PUBLIC_PORT" "$GW_AGENT_PORT" "$RBS_ORCHESTRATOR"
wait_ready_file "$E2E_TMP/gateway.json" publicAddress "$GW_PID" >/dev/null
JBAZEL_BIN="$RBS_ARTIFACTS/jbazel/jbazel"
JBAZEL_GW="$JBAZEL_BIN --rbs_connect=tunnel --rbs_orchestrator=$GW_PUBLIC"
CLEANUP_CMDS+=("cd '$E2E_TMP/ws-jbazel' && '$JBAZEL_BIN' shutdown" "cd '$E2E_TMP/ws-gw' && $JBAZEL_GW shutdown")

log "warming up (bazel servers, agents)"
for _ in 1 2; do
    (cd "$E2E_TMP/ws-local" && bazel build "$TARGET" >/dev/null 2>&1)
    (cd "$E2E_TMP/ws-jbazel" && "$JBAZEL_BIN" build "$TARGET" >/dev/null 2>&1)
    (cd "$E2E_TMP/ws-gw" && $JBAZEL_GW build "$TARGET" >/dev/null 2>&1)
done

log "untraced totals ($RUNS interleaved runs each)"
totals="$(interleave totals "$RUNS" 2 \
    "local=cd $E2E_TMP/ws-local && bazel build $TARGET" \
    "direct=cd $E2E_TMP/ws-jbazel && $JBAZEL_BIN build $TARGET" \
    "gateway=cd $E2E_TMP/ws-gw && $JBAZEL_GW build $TARGET")"

log "traced runs ($RUNS interleaved runs each)"
for i in $(seq "$RUNS"); do
    (cd "$E2E_TMP/ws-local" && "${STRACE[@]}" -o "$TRACES/local-$i.txt" bazel build "$TARGET" >/dev/null 2>&1)
    (cd "$E2E_TMP/ws-jbazel" && RBS_PHASE_TRACE="$TRACES/direct-$i.marks" "${STRACE[@]}" -o "$TRACES/direct-$i.txt" \
        "$JBAZEL_BIN" build "$TARGET" >/dev/null 2>&1)
    (cd "$E2E_TMP/ws-gw" && RBS_PHASE_TRACE="$TRACES/gateway-$i.marks" "${STRACE[@]}" -o "$TRACES/gateway-$i.txt" \
        $JBAZEL_GW build "$TARGET" >/dev/null 2>&1)
done
# Every agent's events on one timeline (a run's window then picks the agent that served it).
cat "$TRACES"/agent-*.txt | sort -k2,2n >"$TRACES/agents.txt"

# events FILE: "<name> <seconds>" lines of one traced run: start (first execve), tool (execve of a real bazel-N),
# connect (that client's first inet connect), client-exit (its exit_group), end (the traced command's exit).
events() {
    awk '
        NR == 1 { main = $1; print "start", $2 }
        $3 ~ /^execve\("[^"]*\/bazel-[0-9][^"]*"/ && !/ = -1 / { tool = $1; print "tool", $2 }
        $1 == tool && $3 ~ /^connect\(/ && /AF_INET/ && !connected { connected = 1; print "connect", $2 }
        $1 == tool && $3 ~ /^exit_group\(/ { print "client-exit", $2 }
        $1 == main && /\+\+\+ exited with/ { print "end", $2 }
    ' "$1"
}

# agent_events FROM TO: the agent side of one remote run, between the client's start and end.
agent_events() {
    awk -v from="$1" -v to="$2" '
        $2 < from || $2 > to { next }
        /CLONE_VFORK/ && !spawned { spawned = 1; print "spawn", $2 }
        $3 ~ /^execve\("[^"]*\/bazel-[0-9][^"]*"/ && !/ = -1 / && !tool { tool = $1; print "tool", $2 }
        tool && $1 == tool && $3 ~ /^connect\(/ && /AF_INET/ && !connected { connected = 1; print "connect", $2 }
        tool && $1 == tool && $3 ~ /^exit_group\(/ { print "client-exit", $2 }
    ' "$TRACES/agents.txt"
}

# phases KIND RUN: one line of "<phase>=<ms>" fields for a run.
phases() {
    local kind="$1" i="$2" f="$TRACES/$1-$2.txt"
    if [ "$kind" = local ]; then
        events "$f" | awk '{ t[$1] = $2 } END {
            printf "wrapper=%.1f client-start=%.1f client-server=%.1f client-exit=%.1f total=%.1f\n",
                (t["tool"] - t["start"]) * 1000, (t["connect"] - t["tool"]) * 1000, (t["client-exit"] - t["connect"]) * 1000,
                (t["end"] - t["client-exit"]) * 1000, (t["end"] - t["start"]) * 1000 }'
        return
    fi
    local start end
    start="$(events "$f" | awk '$1 == "start" { print $2 }')"
    end="$(events "$f" | awk '$1 == "end" { print $2 }')"
    { events "$f" | grep -E '^(start|end) '; awk '{ printf "%s %.6f\n", $1, $2 / 1e6 }' "$TRACES/$kind-$i.marks"; agent_events "$start" "$end"; } |
        awk '{ t[$1] = $2 } END {
            printf "process-start=%.1f settings-workspace=%.1f getserver=%.1f to-agent-spawn=%.1f agent-spawn=%.1f client-start=%.1f client-server=%.1f frames-to-exit=%.1f dispose=%.1f runtime-exit=%.1f total=%.1f\n",
                (t["main"] - t["start"]) * 1000, (t["getserver"] - t["main"]) * 1000, (t["getserver-done"] - t["getserver"]) * 1000,
                (t["spawn"] - t["execute"]) * 1000, (t["tool"] - t["spawn"]) * 1000, (t["connect"] - t["tool"]) * 1000,
                (t["client-exit"] - t["connect"]) * 1000, (t["execute-done"] - t["client-exit"]) * 1000,
                (t["exit"] - t["execute-done"]) * 1000, (t["end"] - t["exit"]) * 1000, (t["end"] - t["start"]) * 1000 }'
}

# median over the runs of every field: "<phase> <median ms>" lines in the fields' order.
medians() {
    awk '{ for (i = 1; i <= NF; i++) { split($i, kv, "="); if (NR == 1) order[i] = kv[1]; v[kv[1], NR] = kv[2] } n = NR; nf = NF }
        END { for (i = 1; i <= nf; i++) { k = order[i]; m = 0
                for (r = 1; r <= n; r++) a[r] = v[k, r]
                for (x = 1; x <= n; x++) for (y = x + 1; y <= n; y++) if (a[y] < a[x]) { s = a[x]; a[x] = a[y]; a[y] = s }
                m = (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
                printf "%s %.1f\n", k, m } }'
}

declare -A table
for kind in local direct gateway; do
    for i in $(seq "$RUNS"); do phases "$kind" "$i"; done >"$TRACES/$kind.phases"
    table[$kind]="$(medians <"$TRACES/$kind.phases")"
done

untraced() { awk -v s="$(field "$totals" "$1" median)" 'BEGIN { printf "%.1f", s * 1000 }'; }
echo
echo "Machine: $MACHINE_STATE; load at the end $(cut -d' ' -f1-3 /proc/loadavg). Medians of $RUNS interleaved runs, ms."
echo "Traces: $TRACES (kept only with RBS_E2E_KEEP=1)."
echo
echo "| phase | jbazel direct | jbazel gateway |"
echo "|---|---|---|"
join -j1 <(awk '{ print NR "_" $1, $2 }' <<<"${table[direct]}" | sort) <(awk '{ print NR "_" $1, $2 }' <<<"${table[gateway]}" | sort) |
    sort -t_ -k1,1n | awk '{ sub(/^[0-9]+_/, "", $1); printf "| %s | %s | %s |\n", $1, $2, $3 }'
echo "| untraced total | $(untraced direct) | $(untraced gateway) |"
echo
echo "| phase | local bazel |"
echo "|---|---|"
awk '{ printf "| %s | %s |\n", $1, $2 }' <<<"${table[local]}"
echo "| untraced total | $(untraced local) |"
echo
echo "Ratios (untraced medians): direct/local $(ratio "$(untraced direct)" "$(untraced local)"), gateway/local $(ratio "$(untraced gateway)" "$(untraced local)")"
