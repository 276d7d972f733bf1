#!/usr/bin/env bash
# For scripts/test.sh: `eval "$(bash scripts/setup-postgres.sh)"`. Makes the local PostgreSQL server ready
# (e2e/setup_postgres.sh: install if missing, start the cluster, role rbs/rbs) and prints the export line
# the state-store tests read.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
connection_string="$(bash "$ROOT/e2e/setup_postgres.sh")"
printf 'export RBS_TEST_POSTGRES=%q\n' "$connection_string"
