#!/usr/bin/env bash
# Test stand-in for an agent that ignores SIGTERM (a wedged agent): like fake-agent.sh, but the ignored
# disposition survives the exec, so only SIGKILL ends it.
trap '' TERM
exec "$(dirname "$0")/fake-agent.sh" "$@"
