#!/usr/bin/env bash
# The README's run command, as a newcomer runs it: `bash e2e/run_example.sh` on a copy of the repository's e2e/ and
# scripts/ (so a regression cannot touch the real source tree). It must build, test and run the C++ example through
# jbazel with real bazel, print bazel's output, stop everything it started, and leave nothing behind: no file in the
# source tree (bazel's convenience symlinks, jbazel-out/, logs), no process, no temp dir, no bazel output base.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

bash "$REPO_ROOT/scripts/install-prereqs.sh"
build_artifacts

E2E_TMP="$(mktemp -d /tmp/rbs-example-test.XXXXXX)"
CHECKOUT="$E2E_TMP/checkout"
mkdir -p "$CHECKOUT" "$E2E_TMP/tmp"
tar -C "$REPO_ROOT" --exclude=bin --exclude=obj -cf - e2e scripts | tar -C "$CHECKOUT" -xf -
# A run of the README's command on this machine may have left bazel's symlinks in the real tree; a fresh clone has none.
find "$CHECKOUT/e2e/workspace" -maxdepth 1 \( -name 'bazel-*' -o -name jbazel-out \) -exec rm -rf {} +

# Every entry of the source tree: type, mode, symlink target, content digest.
tree_listing() {
    (cd "$CHECKOUT" && find . -printf '%y %m %p -> %l\n' | LC_ALL=C sort \
        && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
}
tree_listing >"$E2E_TMP/before.txt"

# The run command's temp dir goes under ours (TMPDIR), so whatever it leaves is found and cleaned up by this script.
set +e
# (the binaries are this checkout's, published above; the copy has no sources to publish from)
(cd "$CHECKOUT" && TMPDIR="$E2E_TMP/tmp" RBS_ARTIFACTS="$RBS_ARTIFACTS" RBS_REBUILD=0 timeout -k 10 600 \
    bash e2e/run_example.sh >"$E2E_TMP/run.out" 2>"$E2E_TMP/run.err" </dev/null)
rc=$?
set -e
log "bash e2e/run_example.sh → exit $rc"
[ "$rc" = 0 ] || { log "its last lines:"; tail -20 "$E2E_TMP/run.err" >&2; }
check "the run command exits 0" test "$rc" = 0
check "it builds //... with real bazel" grep -q "^INFO: Build completed successfully" "$E2E_TMP/run.err"
check "it builds through jbazel on the agent's synced copy" grep -q "^rbs: synced " "$E2E_TMP/run.err"
check "it runs the C++ and shell tests, and they pass" grep -qx "Executed 2 out of 2 tests: 2 tests pass." "$E2E_TMP/run.out"
check "it runs the binary, whose output arrives on stdout" grep -qx "\[1\] Hello, RBS newcomer! (12 bytes)" "$E2E_TMP/run.out"

tree_listing >"$E2E_TMP/after.txt"
diff "$E2E_TMP/before.txt" "$E2E_TMP/after.txt" >&2 || true
check "it leaves nothing in the source tree (no bazel-* symlinks, no jbazel-out/, no logs)" \
    cmp -s "$E2E_TMP/before.txt" "$E2E_TMP/after.txt"
left="$(leftover_processes)"
[ -z "$left" ] || log "left behind: $left"
check "it stops every process it started (orchestrator, agent, bazel server)" test -z "$left"
check "it removes its temp dir" test -z "$(ls -A "$E2E_TMP/tmp")"
# (an output base that outlived the run still links into its temp dir)
stale="$(stale_output_bases)"
[ -z "$stale" ] || log "output base left behind: $stale"
check "it removes the bazel output base of the agent's copy" test -z "$stale"
for ob in $stale; do forget_output_base "$ob" || true; done

finish
