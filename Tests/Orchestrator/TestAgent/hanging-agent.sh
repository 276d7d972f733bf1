#!/usr/bin/env bash
# Test stand-in for an agent that never becomes ready: it never writes its ready file. The agent id stays
# in its command line (exec -a) so the orchestrator can find and kill it on timeout.
exec -a "rbs-hanging-agent $*" sleep 3600
