#!/bin/sh
# Stand-in "build tool" for the many-streams benchmark: the orchestrator's --build-tool, so an agent runs
# `blast.sh zeros <bytes>` for each rbs-bench stream and writes exactly <bytes> zero bytes to stdout.
exec head -c "$2" /dev/zero
