#!/usr/bin/env bash
# Makes a local PostgreSQL server ready for the state-store tests (idempotent; run as root).
#   - installs Debian's postgresql when it is missing,
#   - starts the first cluster (Debian: `pg_ctlcluster 15 main start`),
#   - creates (or resets) a login role `rbs` / password `rbs` with CREATEDB, reachable over TCP on
#     127.0.0.1 (Debian's pg_hba.conf allows scram-sha-256 there; the unix socket only allows peer auth,
#     which root cannot use to log in as postgres),
#   - prints the connection string the tests read from RBS_TEST_POSTGRES.
# Usage:  export RBS_TEST_POSTGRES="$(e2e/setup_postgres.sh)"
set -euo pipefail

log() { echo "setup_postgres: $*" >&2; }

if ! command -v pg_lsclusters >/dev/null 2>&1; then
    log "installing postgresql (Debian)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2
fi

read -r version cluster port status _ < <(pg_lsclusters --no-header | head -n 1) || {
    log "no PostgreSQL cluster found; create one with: pg_createcluster <version> main"
    exit 1
}
if [[ "$status" != online* ]]; then
    log "starting cluster $version $cluster"
    pg_ctlcluster "$version" "$cluster" start >&2
fi

for _ in $(seq 1 50); do
    if pg_isready -q -h 127.0.0.1 -p "$port"; then
        break
    fi
    sleep 0.2
done
pg_isready -h 127.0.0.1 -p "$port" >&2

run_psql() {
    if [[ "$(id -un)" == postgres ]]; then
        psql -v ON_ERROR_STOP=1 -q -p "$port" "$@"
    else
        su postgres -c "psql -v ON_ERROR_STOP=1 -q -p $port $(printf '%q ' "$@")"
    fi
}

run_psql -d postgres -c "DO \$\$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rbs') THEN
    CREATE ROLE rbs LOGIN CREATEDB PASSWORD 'rbs';
  ELSE
    ALTER ROLE rbs LOGIN CREATEDB PASSWORD 'rbs';
  END IF;
END \$\$;" >&2

echo "Host=127.0.0.1;Port=$port;Username=rbs;Password=rbs;Database=postgres"
