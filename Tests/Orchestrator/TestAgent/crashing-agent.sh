#!/usr/bin/env bash
# Test stand-in for an agent that fails at start-up, before writing its ready file.
# Slow enough that concurrent callers queue behind this attempt.
sleep 0.5
echo "fatal: cannot open workspace (simulated start-up failure)" >&2
exit 3
