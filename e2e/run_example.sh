#!/usr/bin/env bash
# The main job: starts the local stack (rbs-orchestrator --local-mode, which spawns an rbs-agent) and runs
# `jbazel build //...` on the bundled example workspace (e2e/workspace) with real bazel, printing bazel's
# output through jbazel. Everything it started is stopped at the end. Embedded defaults: SQLite state in a
# temp dir, ephemeral ports. Extra arguments replace `build //...`, e.g. `bash e2e/run_example.sh query //...`.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

bash "$REPO_ROOT/scripts/install-prereqs.sh"
build_artifacts

E2E_TMP="$(mktemp -d /tmp/rbs-example.XXXXXX)"
WS="$E2E_DIR/workspace"
start_orchestrator
CLEANUP_CMDS+=("cd '$WS' && '$RBS_ARTIFACTS/jbazel/jbazel' shutdown" "kill_agents")

[ $# -gt 0 ] || set -- build //...
log "running: jbazel --rbs_status=always $* (in $WS)"
set +e
(cd "$WS" && JBAZEL --rbs_status=always "$@")
rc=$?
set -e
if [ "$rc" -eq 0 ] && [ "$1" = build ]; then
    log "outputs:"
    for f in "$WS"/bazel-bin/app/*.txt; do printf '  %s: %s\n' "${f#"$WS"/}" "$(head -c 200 "$f" | tr '\n' ' ')" >&2; done
fi
log "jbazel exited with $rc"
exit "$rc"
