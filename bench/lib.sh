# Shared helpers for the bench scripts (source after e2e/lib.sh, once E2E_TMP is set where noted).

# hyperfine (side-by-side timing), OpenSSH (the baseline people use today), socat, rsync.
install_bench_tools() {
    bash "$REPO_ROOT/scripts/install-prereqs.sh"
    if ! command -v hyperfine >/dev/null || [ ! -x /usr/sbin/sshd ] || ! command -v socat >/dev/null || ! command -v rsync >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server openssh-client hyperfine socat rsync >/dev/null
    fi
}

# A private sshd on 127.0.0.1:2222 with key auth under $E2E_TMP/ssh; sets SSH (the client command, host last).
start_private_sshd() {
    SSH_DIR="$E2E_TMP/ssh"; mkdir -p "$SSH_DIR"; chmod 700 "$SSH_DIR"
    ssh-keygen -q -t ed25519 -N '' -f "$SSH_DIR/id"; ssh-keygen -q -t ed25519 -N '' -f "$SSH_DIR/host"
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
    SSH_OPTS="-p 2222 -i $SSH_DIR/id -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o BatchMode=yes"
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

# hf NAME CMD...: hyperfine (no shell) mean seconds of each command, in order; RUNS runs after 3 warm-ups.
hf() {
    local json="$E2E_TMP/$1.json"; shift
    hyperfine -N --warmup 3 --runs "$RUNS" --export-json "$json" "$@" >&2
    jq -r '.results[].mean' "$json"
}
# hf_shell NAME CMD...: the same through a shell (pipes, cd), RBS_BENCH_BIG_RUNS runs (default 5) after 1 warm-up.
hf_shell() {
    local json="$E2E_TMP/$1.json"; shift
    hyperfine --warmup 1 --runs "${RBS_BENCH_BIG_RUNS:-5}" --export-json "$json" "$@" >&2
    jq -r '.results[].mean' "$json"
}

ms() { awk -v s="$1" 'BEGIN { printf "%.1f ms", s * 1000 }'; }
mibs() { awk -v s="$1" 'BEGIN { printf "%.0f MiB/s", 1024 / s }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }
