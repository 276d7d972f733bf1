#!/usr/bin/env bash
# Test stand-in for rbs-agent (lifecycle tests only: it serves no gRPC). Accepts the agent's contract
# flags, writes the ready file atomically like the real agent, then becomes a plain `sleep` whose argv[0]
# still carries the agent id (exec -a), so the orchestrator's "pid alive and is our agent" probe works
# and SIGTERM ends it with no child left behind. The workspace stays in argv[0] too, so a test can find
# every agent it spawned (and any orphan) by its temp directory.
set -euo pipefail
agent_id="" ready_file="" workspace=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --agent-id) agent_id="$2"; shift 2 ;;
    --workspace) workspace="$2"; shift 2 ;;
    --ready-file) ready_file="$2"; shift 2 ;;
    --listen|--idle-exit-after|--build-tool) shift 2 ;;
    *) echo "fake-agent: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ -n "$agent_id" && -n "$ready_file" && -d "$workspace" ]] || { echo "fake-agent: missing --agent-id/--ready-file/--workspace" >&2; exit 2; }
echo "fake-agent $agent_id starting in $workspace"
# The ready file is written only once this process has become the `sleep` below (a helper waits for the exec): an
# agent must never be seen ready while its command line is in flux, or the orchestrator's probe would call it dead.
# Nothing listens: a port from the discard range is enough for tests that never dial the agent.
self=$$
(
  for _ in $(seq 500); do
    tr '\0' ' ' < "/proc/$self/cmdline" 2>/dev/null | grep -q "^rbs-fake-agent " && break
    sleep 0.01
  done
  printf '{"agentId":"%s","pid":%d,"address":"http://127.0.0.1:9"}' "$agent_id" "$self" > "$ready_file.tmp"
  mv "$ready_file.tmp" "$ready_file"
) &
exec -a "rbs-fake-agent --agent-id $agent_id --workspace $workspace" sleep 3600
