#!/usr/bin/env bash
# Makes a local PostgreSQL server ready for the state-store tests (idempotent; root, or sudo).
#   - installs Debian's postgresql when it is missing,
#   - starts the first cluster (Debian: `pg_ctlcluster 15 main start`),
#   - creates (or resets) a login role `rbs` / password `rbs` with CREATEDB, reachable over TCP on
#     127.0.0.1 (Debian's pg_hba.conf allows scram-sha-256 there; the unix socket only allows peer auth,
#     which root cannot use to log in as postgres),
#   - prints the connection string the tests read from RBS_TEST_POSTGRES.
# Usage:  export RBS_TEST_POSTGRES="$(e2e/setup_postgres.sh)"
set -euo pipefail

log() { echo "setup_postgres: $*" >&2; }

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

if ! command -v pg_lsclusters >/dev/null 2>&1; then
    log "installing postgresql (Debian)"
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >&2
fi

read -r version cluster port status _ < <(pg_lsclusters --no-header | head -n 1) || {
    log "no PostgreSQL cluster found; create one with: pg_createcluster <version> main"
    exit 1
}
if [[ "$status" != online* ]]; then
    log "starting cluster $version $cluster"
    $sudo pg_ctlcluster "$version" "$cluster" start >&2
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
    elif [ "$(id -u)" -eq 0 ]; then
        su postgres -c "psql -v ON_ERROR_STOP=1 -q -p $port $(printf '%q ' "$@")"
    else
        sudo -u postgres psql -v ON_ERROR_STOP=1 -q -p "$port" "$@"
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
