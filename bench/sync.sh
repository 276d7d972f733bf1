#!/usr/bin/env bash
# Workspace sync, side by side in one run (issue 6): jbazel's sync to a warm local agent vs `rsync -a --delete`
# over `ssh localhost`, on one generated tree of RBS_SYNC_FILES files (default 10000) totalling ~200 MB.
#   first sync:   empty destination, cold caches on both sides (jbazel's digest cache deleted too)
#   no-op sync:   nothing changed since the last sync
#   1-file edit:  one 16 kB file changed before each run
# jbazel's time is end to end: process start, GetServer, the sync, and a no-op command (the agents' build tool
# is /bin/true, so no bazel time is included). Not part of the tests; never asserts times.
# Usage: bash bench/sync.sh   (installs openssh-server, hyperfine, rsync when missing; its own sshd on 127.0.0.1:2222)
source "$(dirname "${BASH_SOURCE[0]}")/../e2e/lib.sh"
BENCH_DIR="$REPO_ROOT/bench"
source "$BENCH_DIR/lib.sh"
RUNS="${RBS_BENCH_RUNS:-10}"
FILES="${RBS_SYNC_FILES:-10000}"

install_bench_tools
build_artifacts

E2E_TMP="$(mktemp -d /tmp/rbs-bench-sync.XXXXXX)"
start_private_sshd

# The tree: WORKSPACE + 100 directories of 16,000-byte files (FILES of them) + 10 files of 4 MiB, all random.
TREE="$E2E_TMP/tree"
log "generating $FILES files under $TREE"
mkdir -p "$TREE/split"
touch "$TREE/WORKSPACE"
head -c $((FILES * 16000)) /dev/urandom >"$E2E_TMP/blob"
(cd "$TREE/split" && split -b 16000 -a 5 -d "$E2E_TMP/blob" f)
rm "$E2E_TMP/blob"
for d in $(seq -w 0 99); do mkdir -p "$TREE/pkg$d"; done
i=0
for f in "$TREE"/split/f*; do mv "$f" "$TREE/pkg$(printf %02d $((i % 100)))/"; i=$((i + 1)); done
rmdir "$TREE/split"
for b in $(seq 0 9); do head -c 4194304 /dev/urandom >"$TREE/pkg0$b/big$b.bin"; done
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
TRASH="$E2E_TMP/trash"; mkdir -p "$TRASH"
aside() { echo "mv $1 $TRASH/\$(date +%s%N) 2>/dev/null; true"; }
log "first sync"
mapfile -t first < <(hf_shell first \
    --prepare "$(aside "$DST")" "$RSYNC" \
    --prepare "$(aside "$AGENT_TREE"); mkdir $AGENT_TREE; $(aside "$AGENT_SYNC_STATE"); $(aside "$XDG_CACHE_HOME")" "$JBAZEL_SYNC")
rm -rf "$TRASH"

log "no-op sync"
mapfile -t noop < <(hf_shell noop "$RSYNC" "$JBAZEL_SYNC")

log "1-file edit"
mapfile -t edit < <(hf_shell edit \
    --prepare "head -c 16000 /dev/urandom >$EDITED" "$RSYNC" \
    --prepare "head -c 16000 /dev/urandom >$EDITED" "$JBAZEL_SYNC")

diff -r "$TREE" "$AGENT_TREE" >/dev/null || { log "the agent's synced copy differs from the tree after the runs"; exit 1; }

echo
echo "| sync of $FILES files, $(du -sm "$TREE" | cut -f1) MB | rsync -a over ssh localhost | jbazel --rbs_sync (end to end) | ratio | target |"
echo "|---|---|---|---|---|"
echo "| first sync | $(ms "${first[0]}") | $(ms "${first[1]}") | $(ratio "${first[1]}" "${first[0]}") | <= 1.00x |"
echo "| no-op sync | $(ms "${noop[0]}") | $(ms "${noop[1]}") | $(ratio "${noop[1]}" "${noop[0]}") | <= 0.50x |"
echo "| 1-file edit | $(ms "${edit[0]}") | $(ms "${edit[1]}") | $(ratio "${edit[1]}" "${edit[0]}") | |"
