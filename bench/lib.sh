# Shared helpers for the bench scripts (source after e2e/lib.sh, once E2E_TMP is set where noted).

# hyperfine (kept for ad-hoc timing), OpenSSH (the baseline people use today), socat, rsync, GNU time (CPU-s of jbazel).
install_bench_tools() {
    bash "$REPO_ROOT/scripts/install-prereqs.sh"
    if ! command -v hyperfine >/dev/null || [ ! -x /usr/sbin/sshd ] || ! command -v socat >/dev/null || ! command -v rsync >/dev/null \
        || [ ! -x /usr/bin/time ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server openssh-client hyperfine socat rsync time >/dev/null
    fi
}

# perf, for the profiling scripts (stream-profile.sh, sync-breakdown.sh with RBS_BREAKDOWN_PERF=1).
install_perf() {
    command -v perf >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null; }
}

# perf_top DATA SORT N: the N first lines of a flat `perf report` of DATA sorted by SORT (sym, dso, comm,sym, ...).
perf_top() { { perf report -i "$1" --no-children -g none --sort "$2" --stdio 2>/dev/null || true; } | grep -E '^ +[0-9]' | head -"$3" || true; }

# The bench workspace: the e2e example plus bench/workspace (the 1 GiB `blast` target, the no-op target).
bench_workspace() { copy_workspace "$E2E_DIR/workspace" "$1" && cp -r "$BENCH_DIR/workspace/." "$1/"; }

# A/B scripts: one orchestrator per build, state under $E2E_TMP/state-NAME, spawning that build's agent; sets
# BUILD_ORCHESTRATOR[NAME] to its address. Usage: start_build_orchestrator NAME ARTIFACTS_DIR [more orchestrator flags]
declare -A BUILD_ORCHESTRATOR
start_build_orchestrator() {
    local name="$1" artifacts="$2" state="$E2E_TMP/state-$1"
    shift 2
    mkdir -p "$state"
    "$artifacts/rbs-orchestrator/rbs-orchestrator" --local-mode --port 0 \
        --state-path "$state/orchestrator.db" --ready-file "$state/orchestrator.json" \
        --agent-path "$artifacts/rbs-agent/rbs-agent" --default-connect-mode direct "$@" >>"$E2E_TMP/orchestrator-$name.log" 2>&1 &
    CLEANUP_PIDS+=("$!")
    BUILD_ORCHESTRATOR[$name]="$(wait_ready_file "$state/orchestrator.json" address "$!")"
}

# Stops the agents those orchestrators spawned, by the pids in their ready files.
kill_build_agents() {
    local f
    for f in "$E2E_TMP"/state-*/agents/*.json; do [ -f "$f" ] && kill -TERM "$(jq -r .pid "$f")" 2>/dev/null; done
    return 0
}

# A private sshd on a free 127.0.0.1 port with key auth under $E2E_TMP/ssh; sets SSH (the client command, host last).
# (A free port, not a fixed one, so run.sh and the sync.sh it calls can each run their own.)
start_private_sshd() {
    SSH_DIR="$E2E_TMP/ssh"; mkdir -p "$SSH_DIR"; chmod 700 "$SSH_DIR"
    ssh-keygen -q -t ed25519 -N '' -f "$SSH_DIR/id"; ssh-keygen -q -t ed25519 -N '' -f "$SSH_DIR/host"
    cp "$SSH_DIR/id.pub" "$SSH_DIR/authorized_keys"
    mkdir -p /run/sshd
    SSH_PORT="$(free_port)"
    cat >"$SSH_DIR/sshd_config" <<CFG
ListenAddress 127.0.0.1
Port $SSH_PORT
HostKey $SSH_DIR/host
AuthorizedKeysFile $SSH_DIR/authorized_keys
PasswordAuthentication no
PermitRootLogin prohibit-password
StrictModes no
PidFile $SSH_DIR/sshd.pid
CFG
    /usr/sbin/sshd -f "$SSH_DIR/sshd_config" -E "$SSH_DIR/sshd.log"
    CLEANUP_CMDS+=("kill \$(cat '$SSH_DIR/sshd.pid')")
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$SSH_PORT") 2>/dev/null && break; sleep 0.05; done
    SSH_OPTS="-p $SSH_PORT -i $SSH_DIR/id -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o BatchMode=yes"
    SSH="ssh $SSH_OPTS 127.0.0.1"
    export SSH SSH_OPTS
}

# A free loopback port (bounded probe; /dev/tcp connect fails = nobody listens).
free_port() {
    local p
    for _ in $(seq 200); do
        p=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return 0; fi
    done
    log "no free port found"; return 1
}

# Timing: every compared set of commands runs interleaved (A B C A B C ...) through rbs-bench, so a change in the
# machine's state during the run hits all of them alike; results are medians with the interquartile range.
# bench_tool: builds rbs-bench once into $RBS_ARTIFACTS/rbs-bench.
bench_tool() {
    if [ ! -x "$RBS_ARTIFACTS/rbs-bench/rbs-bench" ] || [ "${RBS_REBUILD:-0}" = 1 ]; then
        dotnet build "$REPO_ROOT/bench/Rbs.Bench/Rbs.Bench.csproj" -c Release -o "$RBS_ARTIFACTS/rbs-bench" "${DOTNET_LAYOUT[@]}" -nologo -v quiet >&2
    fi
    BENCH="$RBS_ARTIFACTS/rbs-bench/rbs-bench"
}

# interleave NAME RUNS WARMUPS name=CMD [name:prepare=CMD] ...: prints one line per command,
# "<name> median <s> p25 <s> p75 <s> min <s> max <s> runs <n>", and keeps the samples in $E2E_TMP/NAME.json.
interleave() {
    local name="$1" runs="$2" warmups="$3"; shift 3
    "$BENCH" interleave "$runs" "$warmups" "$E2E_TMP/$name.json" "$@"
}

# field LINES NAME KEY: the KEY value (median, p25, ...) of command NAME in interleave's output.
field() { awk -v n="$2" -v k="$3" '$1 == n { for (i = 2; i < NF; i += 2) if ($i == k) print $(i + 1) }' <<<"$1"; }

# Machine state at the start, so a reader can tell a quiet run from a busy one.
machine_state() {
    local load1
    load1="$(cut -d' ' -f1 /proc/loadavg)"
    log "machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), load average $(cut -d' ' -f1-3 /proc/loadavg)"
    if awk -v l="$load1" 'BEGIN { exit !(l > 0.5) }'; then
        log "WARNING: load average $load1 > 0.5 at the start: the figures below are not from a quiet machine"
    fi
    MACHINE_STATE="$(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg) at start"
}

# verdict VALUE OP LIMIT: "pass" when VALUE OP LIMIT holds (OP: <=, >=, <, >, ==), else "MISS".
verdict() { awk -v v="$1" -v o="$2" -v l="$3" 'BEGIN {
    ok = (o == "<=" && v <= l) || (o == ">=" && v >= l) || (o == "<" && v < l) || (o == ">" && v > l) || (o == "==" && v == l)
    print (ok ? "pass" : "MISS") }'; }

# spread P25 P75: the interquartile range as "±N%" of the median's neighbourhood (half the IQR over the mid value).
spread() { awk -v a="$1" -v b="$2" 'BEGIN { m = (a + b) / 2; printf "±%.0f%%", (m > 0 ? 50 * (b - a) / m : 0) }'; }

ms() { awk -v s="$1" 'BEGIN { printf "%.1f ms", s * 1000 }'; }
mibs() { awk -v s="$1" 'BEGIN { printf "%.0f MiB/s", 1024 / s }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }
# ratio_value A B: A / B as a bare number (for verdicts).
ratio_value() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.4f", a / b }'; }

# start_bench_gateway PUBLIC_PORT AGENT_PORT ORCHESTRATOR_URL [NAME=VALUE ...]: rbs-gateway on fixed loopback ports (the
# gateway and its orchestrator each need the other's address, so the ports are picked first), with the token key
# $E2E_TMP/token.key, its log in $E2E_TMP/gateway.log and extra environment for the gateway only; sets GW_PID. The
# caller waits for $E2E_TMP/gateway.json when it needs the gateway up.
start_bench_gateway() {
    local public="$1" agent="$2" orchestrator="$3"
    shift 3
    env "$@" "$RBS_ARTIFACTS/rbs-gateway/rbs-gateway" --public-listen "127.0.0.1:$public" --agent-listen "127.0.0.1:$agent" \
        --orchestrator "$orchestrator" --token-key-file "$E2E_TMP/token.key" --ready-file "$E2E_TMP/gateway.json" \
        >>"$E2E_TMP/gateway.log" 2>&1 &
    GW_PID=$!
    CLEANUP_PIDS+=("$GW_PID")
}

# start_gateway_stack: an orchestrator (agents connect direct unless a client asks for the tunnel) and its rbs-gateway on
# loopback, with a fresh token key in $E2E_TMP/token.key; waits until the gateway is up. Sets RBS_ORCHESTRATOR,
# GW_PUBLIC_PORT (jbazel --rbs_connect=tunnel --rbs_orchestrator=http://127.0.0.1:$GW_PUBLIC_PORT) and GW_PID.
start_gateway_stack() {
    local agent_port
    head -c 32 /dev/urandom | base64 >"$E2E_TMP/token.key"
    GW_PUBLIC_PORT="$(free_port)"; agent_port="$(free_port)"
    start_orchestrator --gateway-public-address "http://127.0.0.1:$GW_PUBLIC_PORT" \
        --gateway-agent-address "http://127.0.0.1:$agent_port" --token-key-file "$E2E_TMP/token.key" --default-connect-mode direct
    start_bench_gateway "$GW_PUBLIC_PORT" "$agent_port" "$RBS_ORCHESTRATOR"
    wait_ready_file "$E2E_TMP/gateway.json" publicAddress "$GW_PID" >/dev/null
}

# sync_tree DIR FILES: the sync benchmarks' tree: WORKSPACE, FILES random files of 16,000 bytes in 100 directories
# (fNNNNN goes to pkg<NNNNN % 100>, its last two digits) and 10 random files of 4 MiB.
sync_tree() {
    local tree="$1" files="$2"
    mkdir -p "$tree/split"
    touch "$tree/WORKSPACE"
    head -c $((files * 16000)) /dev/urandom >"$tree/blob"
    (cd "$tree/split" && split -b 16000 -a 5 -d ../blob f)
    rm "$tree/blob"
    for d in $(seq -w 0 99); do mkdir -p "$tree/pkg$d"; done
    # One mv per directory, not one per file (minutes on a busy machine).
    (cd "$tree/split" && for d in $(seq -w 0 99); do find . -name "f*$d" -exec mv -t "../pkg$d/" {} +; done)
    rmdir "$tree/split"
    for b in $(seq 0 9); do head -c 4194304 /dev/urandom >"$tree/pkg0$b/big$b.bin"; done
}

# cpu_ticks PID: the CPU time (utime + stime, in clock ticks: getconf CLK_TCK) of a process, summed over its threads.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
# machine_ticks: the whole machine's busy CPU time so far, in clock ticks (getconf CLK_TCK per second): user, nice,
# system, irq and softirq of /proc/stat, so kernel work charged to no process counts too.
machine_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
