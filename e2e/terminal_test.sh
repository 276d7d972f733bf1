#!/usr/bin/env bash
# Terminal fidelity (issue 11, item 1) in a real terminal: tmux runs local `bazel` and `jbazel` (direct mode, local
# orchestrator) in two windows of the same size on two copies of the same workspace and compares what
# `capture-pane -e` shows: the same screen and SGR colour sequences, no scrolled `[n / m]` progress lines, the summary
# printed as often as bazel prints it. Then, through jbazel: a window resize reaches `bazel run` (SIGWINCH, `stty size`),
# the terminal is raw for an interactive `bazel run` and restored after it, after Ctrl-C and after the second Ctrl-C
# (`stty -g` before and after), and a redirected stdout stays byte-identical to bazel's (`run > file`, `query | sort`).
# Usage: bash e2e/terminal_test.sh      (installs tmux, bazel-bootstrap and jq when missing, publishes RBS once)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

bash "$REPO_ROOT/scripts/install-prereqs.sh"
build_artifacts

E2E_TMP="$(mktemp -d /tmp/rbs-terminal.XXXXXX)"
COLS=100
ROWS=30
# Each side: its own workspace copy (same name, so bazel's messages match) and output root.
LOCAL="$E2E_TMP/local/term"
REMOTE="$E2E_TMP/remote/term"
mkdir -p "$LOCAL/gen" "$LOCAL/tools"
cat >"$LOCAL/WORKSPACE" <<'EOF'
workspace(name = "term")
EOF
# Debian's bazel-bootstrap runs linux-sandbox with debug output, which timestamps every action's log: run actions
# unsandboxed so the two screens can be compared.
cat >"$LOCAL/.bazelrc" <<'EOF'
build --spawn_strategy=standalone
run --spawn_strategy=standalone
EOF
cat >"$LOCAL/gen/BUILD" <<'EOF'
# Eight one-second actions: long enough for bazel's progress area to be redrawn many times.
[genrule(
    name = "part%d" % i,
    outs = ["part%d.txt" % i],
    cmd = "sleep 1; echo %d > $@" % i,
) for i in range(8)]

genrule(
    name = "summary",
    srcs = [":part%d" % i for i in range(8)],
    outs = ["summary.txt"],
    cmd = "cat $(SRCS) > $@",
)
EOF
cat >"$LOCAL/tools/BUILD" <<'EOF'
# Executables for `bazel run` (executable genrules: no rule set needed offline).
[genrule(
    name = name,
    srcs = [name + ".sh"],
    outs = [name + ".bin"],
    cmd = "cp $< $@",
    executable = True,
) for name in ["size", "reader", "stubborn", "bytes"]]
EOF
cat >"$LOCAL/tools/size.sh" <<'EOF'
#!/bin/bash
# Prints the terminal's size at start and after SIGWINCH (the latest size: bash may merge signals); a line "q" ends
# it (at most 60 s). bash runs a trap once `wait` is interrupted, not inside `read`: wait, then read what is there.
changed=0
trap 'changed=1' WINCH
echo "SIZE $(stty size)"
for _ in $(seq 600); do
    sleep 0.1 & wait $!
    if [ "$changed" = 1 ]; then changed=0; echo "SIZE $(stty size)"; fi
    if read -r -t 0 && IFS= read -r line && [ "$line" = q ]; then exit 0; fi
done
exit 1
EOF
cat >"$LOCAL/tools/reader.sh" <<'EOF'
#!/bin/bash
# An interactive program: asks, reads one line from the terminal, answers.
printf 'name? '
IFS= read -r line
echo "GOT [$line]"
EOF
cat >"$LOCAL/tools/stubborn.sh" <<'EOF'
#!/bin/bash
# Ignores Ctrl-C: only the second Ctrl-C gets jbazel back (at most 60 s).
trap '' INT
echo STUBBORN
for _ in $(seq 600); do sleep 0.1; done
EOF
cat >"$LOCAL/tools/bytes.sh" <<'EOF'
#!/bin/bash
# stdout bytes a terminal would translate: LF, CRLF, CR, escapes, no trailing newline; plus stderr.
printf 'line one\nline two\r\n\rcarriage\033[31mred\033[0m\ttab\x01\x7f'
for i in $(seq 0 255); do printf "\\x$(printf %02x "$i")"; done
echo "to stderr" >&2
printf 'end'
EOF
chmod +x "$LOCAL"/tools/*.sh
mkdir -p "$(dirname "$REMOTE")"
cp -a "$LOCAL" "$REMOTE"
LOCAL_ROOT="$E2E_TMP/local/root"
REMOTE_ROOT="$E2E_TMP/remote/root"

start_orchestrator

cat >"$E2E_TMP/tmux.conf" <<'EOF'
set -g default-terminal xterm-256color
set -g status off
set -g history-limit 5000
EOF
TMUX_CMD=(tmux -S "$E2E_TMP/tmux.sock" -f "$E2E_TMP/tmux.conf")
tm() { "${TMUX_CMD[@]}" "$@"; }
# In this order: the terminals first (their commands end with them), then the agents (which shut their bazel
# servers down), then the local server.
CLEANUP_CMDS+=("tm kill-server" "kill_agents")
CLEANUP_CMDS+=("cd '$LOCAL' && timeout 60 bazel --output_user_root='$LOCAL_ROOT' shutdown")
CLEANUP_CMDS+=("cd '$REMOTE' && timeout 60 bazel --output_user_root='$REMOTE_ROOT' shutdown")

# One detached session per side, each one window of COLS x ROWS running a plain interactive bash. `b` is bazel on the
# local side and jbazel on the remote one, so both screens show the same command lines.
open_side() {
    local name="$1" dir="$2" bazel="$3"
    tm new-session -d -s "$name" -x "$COLS" -y "$ROWS" -c "$dir" \
        env -i PATH="$PATH" HOME="$HOME" TERM=xterm-256color LANG=C.UTF-8 RBS_ORCHESTRATOR="$RBS_ORCHESTRATOR" \
        bash --norc --noprofile -i
    tm send-keys -t "$name" "PS1='\$ '; b() { $bazel \"\$@\"; }" Enter
}
open_side local "$LOCAL" "bazel --output_user_root=$LOCAL_ROOT"
open_side remote "$REMOTE" "'$RBS_ARTIFACTS/jbazel/jbazel' --rbs_status=never --output_user_root=$REMOTE_ROOT"

# screen SIDE: the whole pane (scrollback included) with colours, as tmux renders it.
screen() { tm capture-pane -p -e -S - -E - -t "$1"; }
plain() { tm capture-pane -p -S - -E - -t "$1"; }
# wait_for SIDE REGEX [SECONDS]: waits until the pane shows a line matching REGEX.
wait_for() {
    local side="$1" pattern="$2" seconds="${3:-240}" tries
    tries=$((seconds * 10))
    until plain "$side" | grep -Eq -- "$pattern"; do
        tries=$((tries - 1))
        if [ "$tries" -le 0 ]; then
            log "timed out waiting for /$pattern/ in $side; it shows:"
            plain "$side" | tail -20 >&2
            return 1
        fi
        sleep 0.1
    done
}
# run_on SIDE COMMAND: types COMMAND and Enter.
run_on() { tm send-keys -t "$1" "$2" Enter; }
# fresh SIDE: once the shell is idle at its prompt, an empty screen and no scrollback (tmux resets the pane itself,
# so nothing races with the shell's output).
fresh() {
    local tries=100
    until [ "$(plain "$1" | sed '/^$/d' | tail -1)" = '$' ]; do
        tries=$((tries - 1)); [ "$tries" -gt 0 ] || { log "$1 is not back at its prompt"; break; }
        sleep 0.1
    done
    tm send-keys -R -t "$1"
    tm clear-history -t "$1"
}
# normalise: timings and this run's paths; trailing blank lines.
normalise() {
    sed -E -e 's/[0-9]+\.[0-9]+s/N.Ns/g' -e "s#$E2E_TMP/(local|remote)#WS#g" | sed -e :a -e '/^\n*$/{$d;N;ba' -e '}'
}
sgr_sequences() { grep -oE $'\e\\[[0-9;]*m' || true; }

# 1. The same build in both terminals. First warm both servers (and the agent) outside the comparison.
for side in local remote; do
    run_on "$side" "b build //... >/dev/null 2>&1; b clean >/dev/null 2>&1; echo WARM:\$?"
done
wait_for local '^WARM:0' 300
wait_for remote '^WARM:0' 300
for side in local remote; do
    fresh "$side"
    run_on "$side" "b build //gen:summary; echo DONE:\$?"
done
wait_for local '^DONE:' 300
wait_for remote '^DONE:' 300
screen local | normalise >"$E2E_TMP/local.screen"
screen remote | normalise >"$E2E_TMP/remote.screen"
log "local bazel's screen:"; cat -v "$E2E_TMP/local.screen" >&2
log "jbazel's screen:"; cat -v "$E2E_TMP/remote.screen" >&2

check "local bazel's build succeeded in the terminal" grep -q '^DONE:0' "$E2E_TMP/local.screen"
check "jbazel's build succeeded in the terminal" grep -q '^DONE:0' "$E2E_TMP/remote.screen"
sgr_sequences <"$E2E_TMP/local.screen" >"$E2E_TMP/local.sgr"
sgr_sequences <"$E2E_TMP/remote.screen" >"$E2E_TMP/remote.sgr"
check "local bazel colours its terminal output (the comparison means something)" test -s "$E2E_TMP/local.sgr"
check "jbazel shows the same SGR colour sequences as bazel" cmp -s "$E2E_TMP/local.sgr" "$E2E_TMP/remote.sgr"
progress() { grep -cE '^(.\[[0-9;]*m)?\[[0-9,]+ / [0-9,]+\]' "$1" || true; }
check "local bazel leaves no [n / m] progress line behind" test "$(progress "$E2E_TMP/local.screen")" = 0
check "jbazel leaves no scrolled [n / m] progress line (curses progress, rewritten in place)" test "$(progress "$E2E_TMP/remote.screen")" = 0
summaries() { grep -c 'Build completed successfully' "$1" || true; }
log "summary lines: local $(summaries "$E2E_TMP/local.screen"), jbazel $(summaries "$E2E_TMP/remote.screen")"
check "jbazel prints the summary line as often as bazel (once)" test "$(summaries "$E2E_TMP/remote.screen")" = "$(summaries "$E2E_TMP/local.screen")"
if ! diff <(cat -v "$E2E_TMP/local.screen") <(cat -v "$E2E_TMP/remote.screen") >&2; then
    log "the screens differ (above: < local bazel, > jbazel)"
fi
check "jbazel's screen is bazel's screen (timings and paths normalised)" cmp -s "$E2E_TMP/local.screen" "$E2E_TMP/remote.screen"

# 2. A window resize reaches the remote terminal: `bazel run` of a program printing `stty size` on SIGWINCH. Both
# sides, so the local one shows the test itself works.
for side in local remote; do
    fresh "$side"
    run_on "$side" "b run //tools:size; echo RC:\$?"
done
for side in local remote; do
    check "bazel run on the $side side sees the window size ($ROWS x $COLS)" wait_for "$side" "^SIZE $ROWS $COLS" 120
    tm resize-window -t "$side" -x 90 -y 25
    check "a resize of the $side window reaches the program (SIGWINCH, new size 25 x 90)" wait_for "$side" '^SIZE 25 90' 30
    tm send-keys -t "$side" "q" Enter
    check "the resized program on the $side side ended normally (exit 0)" wait_for "$side" '^RC:0' 30
    tm resize-window -t "$side" -x "$COLS" -y "$ROWS"
done

# 3. An interactive `bazel run`: the terminal is raw for it (the remote terminal echoes and edits) and restored.
# (Each pane saves its settings before it prints RC:, so a check that follows the RC: line finds them written.)
stty_check() {  # stty_check NAME: the terminal settings before and after, saved by the pane itself
    cmp -s "$E2E_TMP/remote/$1.before" "$E2E_TMP/remote/$1.after" && test -s "$E2E_TMP/remote/$1.before"
}
for side in local remote; do
    fresh "$side"
    run_on "$side" "stty -g > ../reader.before; b run //tools:reader; rc=\$?; stty -g > ../reader.after; echo RC:\$rc"
    wait_for "$side" 'name\?$' 120 || true
    tm send-keys -t "$side" "hello wörld" Enter
    wait_for "$side" '^RC:' 30 || true
done
check "the interactive program read the typed line (echoed by the remote terminal)" wait_for remote '^GOT \[hello wörld\]' 5
check "the interactive program exited 0" wait_for remote '^RC:0' 5
check "the typed line was echoed once, as a local terminal does" test "$(plain remote | grep -c 'name? hello wörld$')" = 1
check "the terminal settings after 'jbazel run' are the ones before it" stty_check reader
screen local | normalise >"$E2E_TMP/run-local.screen"
screen remote | normalise >"$E2E_TMP/run-remote.screen"
if ! diff <(cat -v "$E2E_TMP/run-local.screen") <(cat -v "$E2E_TMP/run-remote.screen") >&2; then
    log "the 'run' screens differ (above: < local bazel, > jbazel)"
fi
check "the interactive 'jbazel run' screen is bazel's (timings and paths normalised)" \
    cmp -s "$E2E_TMP/run-local.screen" "$E2E_TMP/run-remote.screen"

# 4. Ctrl-C: bazel's client forwards it to the program, which dies of it, as locally; the terminal is restored.
# (Locally the program dies of SIGINT, so the shell drops the rest of the line: $? is read by the next command.)
for side in local remote; do
    fresh "$side"
    run_on "$side" "stty -g > ../ctrlc.before; b run //tools:size"
    wait_for "$side" '^SIZE ' 120 || true
    tm send-keys -t "$side" C-c
    fresh "$side"
    run_on "$side" "rc=\$?; stty -g > ../ctrlc.after; echo RC:\$rc"
    wait_for "$side" '^RC:' 60 || true
done
local_rc="$(plain local | grep -oE '^RC:[0-9]+' | tail -1)"
remote_rc="$(plain remote | grep -oE '^RC:[0-9]+' | tail -1)"
log "after Ctrl-C: local bazel $local_rc, jbazel $remote_rc"
check "Ctrl-C ends 'jbazel run' with the exit status bazel's shows ($local_rc)" test -n "$local_rc" -a "$remote_rc" = "$local_rc"
check "the terminal settings after Ctrl-C are the ones before it" stty_check ctrlc

# 5. The second Ctrl-C leaves jbazel at once (exit 8) even though the program ignores the first; terminal restored.
fresh remote
run_on remote "stty -g > ../second.before; b run //tools:stubborn; rc=\$?; stty -g > ../second.after; echo RC:\$rc"
wait_for remote '^STUBBORN' 120 || true
agent_log() { cat "$E2E_TMP"/state/agents/*.log 2>/dev/null; }
interrupts="$(agent_log | grep -c 'SIGINT sent to its process group' || true)"
tm send-keys -t remote C-c
# The second Ctrl-C once the first has reached the agent (it SIGINTs the program, which ignores it).
tries=300
until [ "$(agent_log | grep -c 'SIGINT sent to its process group' || true)" -gt "$interrupts" ]; do
    tries=$((tries - 1)); [ "$tries" -gt 0 ] || { log "the agent never logged the first interrupt"; break; }
    sleep 0.1
done
tm send-keys -t remote C-c
check "the second Ctrl-C leaves jbazel with exit 8" wait_for remote '^RC:8' 30
check "the terminal settings after the second Ctrl-C are the ones before it" stty_check second

# 6. stdout that is not a terminal stays byte-exact while stderr is the terminal.
for side in local remote; do
    fresh "$side"
    run_on "$side" "b run //tools:bytes > $E2E_TMP/run-$side.out; b query //... | sort > $E2E_TMP/query-$side.out; echo BYTES:\$?"
done
wait_for local '^BYTES:' 120 || true
wait_for remote '^BYTES:' 120 || true
check "'jbazel run //x > file' is byte-identical to bazel's (stderr on the terminal)" \
    cmp -s "$E2E_TMP/run-local.out" "$E2E_TMP/run-remote.out"
check "the redirected run output is the program's bytes, untranslated" \
    bash -c "head -c 18 '$E2E_TMP/run-remote.out' | cmp -s - <(printf 'line one\nline two\r')"
check "'jbazel query //... | sort' is byte-identical to bazel's (stderr on the terminal)" \
    cmp -s "$E2E_TMP/query-local.out" "$E2E_TMP/query-remote.out"
check "the query listed the workspace's targets" grep -q '^//gen:summary$' "$E2E_TMP/query-remote.out"
check "the program's stderr went to the terminal" wait_for remote '^to stderr' 5

finish
