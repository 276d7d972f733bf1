#!/usr/bin/env bash
# The seed's flow 1 (shared/seed/architecture.md §1) with real processes and real bazel:
# rbs-orchestrator --local-mode → ProcessComputeService → rbs-agent → bazel, driven by jbazel.
# Usage: bash e2e/mirror_test.sh        (installs bazel-bootstrap and jq when missing, publishes RBS once)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

bash "$REPO_ROOT/scripts/install-prereqs.sh"
build_artifacts

E2E_TMP="$(mktemp -d /tmp/rbs-mirror.XXXXXX)"
WS="$E2E_TMP/workspace"
copy_workspace "$E2E_DIR/workspace" "$WS"
RUN_WORKSPACES+=("$WS")
CLEANUP_CMDS+=("cd '$WS' && timeout 60 bazel shutdown")
start_orchestrator

# run NAME ARGS...: jbazel in the workspace; stdout/stderr/rc into $E2E_TMP/NAME.{out,err,rc}.
run() {
    local name="$1"; shift
    set +e
    (cd "$WS" && JBAZEL --rbs_status=always "$@" >"$E2E_TMP/$name.out" 2>"$E2E_TMP/$name.err" </dev/null)
    echo $? >"$E2E_TMP/$name.rc"
    set -e
    log "jbazel $* → exit $(cat "$E2E_TMP/$name.rc")"
}
rc_of() { cat "$E2E_TMP/$1.rc"; }
# The status line: "rbs: agent <id> (<backend> <ref>) <warm|cold> in <N> ms, trace <trace id>"
status_of() { grep -m1 '^rbs: agent ' "$E2E_TMP/$1.err" || true; }
agent_of() { status_of "$1" | awk '{print $3}'; }
pid_of() { status_of "$1" | awk '{print $5}' | tr -d ')'; }
temp_of() { status_of "$1" | awk '{print $6}'; }

# 1. Cold build of //... through the whole stack.
run first build //...
check "first build exits 0" test "$(rc_of first)" = 0
check "first build streams bazel's own output" grep -q "Build completed successfully" "$E2E_TMP/first.err"
check "status line reports a cold agent" test "$(temp_of first)" = cold
check "greeting output exists and matches" test "$(cat "$WS/bazel-bin/app/greeting.txt" 2>/dev/null)" = "HELLO FROM RBS"
expected_report="$(printf 'report for:\nHELLO FROM RBS\n15')"
check "report output exists and matches" test "$(cat "$WS/bazel-bin/app/report.txt" 2>/dev/null)" = "$expected_report"
check "noop output exists" test -f "$WS/bazel-bin/app/noop.txt"
check "the C++ binary was compiled and runs" test "$("$WS/bazel-bin/app/hello" rbs 2>/dev/null | tail -n1)" = "[1] Hello, rbs! (3 bytes)"

# 2. The second run reuses the same warm agent (same id, same pid).
run second build //...
check "second build exits 0" test "$(rc_of second)" = 0
check "second run is warm" test "$(temp_of second)" = warm
check "second run reuses the agent id" test -n "$(agent_of first)" -a "$(agent_of first)" = "$(agent_of second)"
check "second run reuses the agent process" test "$(pid_of first)" = "$(pid_of second)"

# 3. stdout is bazel's stdout: `bazel info workspace` prints the workspace path.
run info info workspace
check "info exits 0" test "$(rc_of info)" = 0
check "bazel's stdout arrives on jbazel's stdout" test "$(cat "$E2E_TMP/info.out")" = "$WS"

# 4. A failing target gives bazel's exit code and stderr through jbazel.
run failing build //fail:fail
check "failing target exits with bazel's code 1" test "$(rc_of failing)" = 1
check "failing genrule's stderr arrives" grep -q "fails on purpose" "$E2E_TMP/failing.err"

# 5. A killed agent is detected and replaced.
old_pid="$(pid_of second)"
kill -KILL "$old_pid"
while kill -0 "$old_pid" 2>/dev/null; do sleep 0.1; done
run replaced build //...
check "build after agent death exits 0" test "$(rc_of replaced)" = 0
check "dead agent replaced by a cold one" test "$(temp_of replaced)" = cold
check "replacement has a new agent id" test "$(agent_of replaced)" != "$(agent_of second)"
check "replacement has a new pid" test "$(pid_of replaced)" != "$old_pid"

# 6. Ctrl-C during a slow genrule: exit 8, and the genrule's action and bazel client are gone.
set -m  # own process group, so the background jbazel does not start with SIGINT ignored
(cd "$WS" && exec "$RBS_ARTIFACTS/jbazel/jbazel" build //slow:slow >"$E2E_TMP/slow.out" 2>"$E2E_TMP/slow.err" </dev/null) &
slow_pid=$!
set +m
for _ in $(seq 600); do pgrep -f "sleep 598" >/dev/null && break; sleep 0.1; done
# (the redirection inside a function: on the check line it would swallow the CHECK line too)
running() { pgrep -f "$1" >/dev/null; }
check "slow genrule started remotely" running "sleep 598"
kill -INT "$slow_pid"
set +e; wait "$slow_pid"; slow_rc=$?; set -e
log "interrupted jbazel → exit $slow_rc"
check "Ctrl-C gives bazel's exit code 8" test "$slow_rc" = 8
gone() { for _ in $(seq 100); do pgrep -f "$1" >/dev/null || return 0; sleep 0.1; done; return 1; }
check "the interrupted genrule action is gone" gone "sleep 598"
check "no bazel client left for the interrupted command" gone "slow:slow"

# 7. Shut down: bazel server through jbazel, then agents and orchestrator; nothing may be left.
run shutdown shutdown
check "jbazel shutdown exits 0" test "$(rc_of shutdown)" = 0
kill_agents
stop_orchestrator
sleep 0.5
left="$(leftover_processes)"
[ -z "$left" ] || log "left behind: $left"
check "no process of this run left behind" test -z "$left"
forget_run_output_bases
check "no bazel output base of this run left behind" test -z "$(stale_output_bases)"

finish
