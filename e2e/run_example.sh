#!/usr/bin/env bash
# The main job: starts the local stack (rbs-orchestrator --local-mode, which spawns an rbs-agent) and, through
# jbazel with real bazel, builds the bundled C++ example (e2e/workspace), runs its tests and runs its binary,
# printing bazel's output. Everything it started is stopped at the end, and it leaves nothing in the source tree.
# Embedded defaults: SQLite state in a temp dir, ephemeral ports.
# Extra arguments replace those three commands, e.g. `bash e2e/run_example.sh query //...`.
#
# The agent builds its own synced copy of e2e/workspace (`--rbs_sync`, what a laptop gets through the gateway), so
# bazel's convenience symlinks (bazel-bin, ...) land in that copy, in the temp dir, and not in the source tree;
# bazel's output is the same as in place (e2e/compare_test.sh compares both with local bazel). Edit the example and
# run this again: the edit is synced and built.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

bash "$REPO_ROOT/scripts/install-prereqs.sh"
build_artifacts

E2E_TMP="$(mktemp -d "${TMPDIR:-/tmp}/rbs-example.XXXXXX")"
WS="$E2E_DIR/workspace"
start_orchestrator
# On exit: the agent's bazel server, then the agent, then (lib.sh) the orchestrator by pid and the bazel output base
# of the agent's copy, which lives in ~/.cache/bazel and would otherwise outlive the temp dir.
CLEANUP_CMDS+=("cd '$WS' && timeout 60 '$RBS_ARTIFACTS/jbazel/jbazel' --rbs_sync shutdown" "kill_agents")

# jb ARGS...: jbazel in the example workspace, on the agent's synced copy; bazel's output goes straight through.
jb() {
    log "jbazel $*"
    (cd "$WS" && JBAZEL --rbs_status=always --rbs_sync "$@")
}

set +e
if [ $# -gt 0 ]; then
    jb "$@"
    rc=$?
else
    jb build //... && jb test //... && jb run //app:hello -- "RBS newcomer"
    rc=$?
fi
set -e
log "jbazel exited with $rc"
exit "$rc"
