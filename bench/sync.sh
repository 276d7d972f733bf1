#!/usr/bin/env bash
# Workspace sync, side by side in one run (issue 6): jbazel's sync to a warm local agent vs `rsync -a --delete`
# over `ssh localhost`, on one generated tree of RBS_SYNC_FILES files (default 10000) totalling ~200 MB.
#   first sync:   empty destination, cold caches on both sides (jbazel's digest cache deleted too)
#   no-op sync:   nothing changed since the last sync
#   1-file edit:  one 16 kB file changed before each run
# jbazel's time is end to end: process start, GetServer, the sync, and a no-op command (the agents' build tool
# is /bin/true, so no bazel time is included). Not part of the tests; never asserts times.
# Usage: bash bench/sync.sh   (installs openssh-server, hyperfine, rsync when missing; its own sshd on a free 127.0.0.1 port)
source "$(dirname "${BASH_SOURCE[0]}")/../e2e/lib.sh"
BENCH_DIR="$REPO_ROOT/bench"
source "$BENCH_DIR/lib.sh"
RUNS="${RBS_BENCH_SYNC_RUNS:-10}"
FILES="${RBS_SYNC_FILES:-10000}"

install_bench_tools
build_artifacts
bench_tool

E2E_TMP="$(mktemp -d /tmp/rbs-bench-sync.XXXXXX)"
start_private_sshd

# The tree: WORKSPACE + 100 directories of 16,000-byte files (FILES of them) + 10 files of 4 MiB, all random.
TREE="$E2E_TMP/tree"
log "generating $FILES files under $TREE"
sync_tree "$TREE" "$FILES"
EDITED="$(find "$TREE/pkg42" -type f -name 'f*' | head -n1)"
log "tree: $(find "$TREE" -type f | wc -l) files, $(du -sm "$TREE" | cut -f1) MB; edited file $EDITED"

# A local stack whose agents build synced copies and run /bin/true as the build tool.
start_orchestrator --build-tool /bin/true
CLEANUP_CMDS+=("kill_agents")
export XDG_CACHE_HOME="$E2E_TMP/cache"
JB="$RBS_ARTIFACTS/jbazel/jbazel --rbs_sync --rbs_status=never"
(cd "$TREE" && $JB version >/dev/null)
AGENT_TREE="$(find "$E2E_TMP/state/workspaces" -mindepth 3 -maxdepth 3 -type d -name tree | head -n1)"
[ -n "$AGENT_TREE" ] || { log "no synced agent workspace under $E2E_TMP/state/workspaces"; exit 1; }
AGENT_SYNC_STATE="$(dirname "$AGENT_TREE")/.tree.rbs-sync"
DST="$E2E_TMP/rsync-dst"
RSYNC="rsync -a --delete -e 'ssh $SSH_OPTS' $TREE/ 127.0.0.1:$DST/"
JBAZEL_SYNC="cd $TREE && $JB version"

# Sanity: both copies equal the tree after one sync each.
eval "$RSYNC"
diff -r "$TREE" "$DST" >/dev/null || { log "rsync copy differs from the tree"; exit 1; }
diff -r "$TREE" "$AGENT_TREE" >/dev/null || { log "the agent's synced copy differs from the tree"; exit 1; }

# First sync: the previous copies are moved aside, not deleted: freeing 10k inodes right before the run makes ext4's
# next 10k allocations scan recently freed inodes, which measured the file system rather than either tool.
# And each first sync starts after a `sync`: ext4 without a journal (this machine's) also skips, per create, every free
# inode deleted in the last 5 minutes whose inode-table block is still dirty; after a flush only the last 5 seconds'.
TRASH="$E2E_TMP/trash"; mkdir -p "$TRASH"
aside() { echo "mv $1 $TRASH/\$(date +%s%N) 2>/dev/null; true"; }
log "first sync ($RUNS interleaved runs each)"
first="$(interleave first "$RUNS" 0 \
    "rsync:prepare=$(aside "$DST"); sync" "rsync=$RSYNC" \
    "jbazel:prepare=$(aside "$AGENT_TREE"); mkdir $AGENT_TREE; $(aside "$AGENT_SYNC_STATE"); $(aside "$XDG_CACHE_HOME"); sync" "jbazel=$JBAZEL_SYNC")"
rm -rf "$TRASH"

log "no-op sync"
noop="$(interleave noop "$RUNS" 1 "rsync=$RSYNC" "jbazel=$JBAZEL_SYNC")"

log "1-file edit"
edit="$(interleave edit "$RUNS" 0 \
    "rsync:prepare=head -c 16000 /dev/urandom >$EDITED" "rsync=$RSYNC" \
    "jbazel:prepare=head -c 16000 /dev/urandom >$EDITED" "jbazel=$JBAZEL_SYNC")"

diff -r "$TREE" "$AGENT_TREE" >/dev/null || { log "the agent's synced copy differs from the tree after the runs"; exit 1; }

# Rows of bench/run.sh's table (run on its own, this script prints just these rows).
mb="$(du -sm "$TREE" | cut -f1)"
row() { # row LABEL LINES TARGET_OP TARGET_RATIO
    local r j ratio_v target="" result=""
    r="$(field "$2" rsync median)"; j="$(field "$2" jbazel median)"; ratio_v="$(ratio_value "$j" "$r")"
    if [ -n "${3:-}" ]; then target="$3 ${4}x of rsync"; result="$(verdict "$ratio_v" "$3" "$4")"; fi
    echo "| sync of $FILES files / $mb MB, $1: jbazel --rbs_sync (end to end) vs rsync -a over ssh | $(ms "$j") ($(spread "$(field "$2" jbazel p25)" "$(field "$2" jbazel p75)")) vs $(ms "$r") ($(spread "$(field "$2" rsync p25)" "$(field "$2" rsync p75)")) | $(ratio "$j" "$r") of rsync | $target | $result |"
}
row "first sync" "$first" "<=" 0.80
row "no-op sync" "$noop" "<=" 0.50
row "1-file edit" "$edit"
