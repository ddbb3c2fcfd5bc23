#!/usr/bin/env bash
# Services for the feedback app's browser and database tests (design §8, issue 9).
#
#   eval "$(bash scripts/ci-services.sh)"
#
# Installs Debian's chromium, chromium-driver and postgresql when missing (needs root and the
# package registries), starts a PostgreSQL cluster as the postgres user, creates a test role and
# database, and prints `export ALIGNFORGE_TEST_PG_URL=...` on stdout. Everything else goes to
# stderr so the `eval` only sees the export lines. Idempotent: a second run installs nothing,
# finds the cluster online and the role present, and prints the same line in about a second.
# When it cannot do something (not root, no network) it says so and prints nothing for it; the
# matching tests then skip with that reason instead of failing the whole run.
set -euo pipefail

log() { echo "ci-services: $*" >&2; }

PG_ROLE=${ALIGNFORGE_PG_ROLE:-alignforge_test}
PG_DB=${ALIGNFORGE_PG_DB:-alignforge_test}
# A throwaway password for a role that only exists on a CI machine / a developer's laptop and
# listens on loopback only.
PG_PASSWORD=${ALIGNFORGE_PG_PASSWORD:-alignforge_test}

# ---- packages ------------------------------------------------------------------------------
need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  need+=(postgresql)
fi
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    log "not root: cannot install ${need[*]} (their tests will skip)"
  else
    log "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || log "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${need[@]}" >&2 || log "apt-get install ${need[*]} failed"
  fi
else
  log "chromium, chromedriver and postgresql already installed"
fi

# ---- PostgreSQL ------------------------------------------------------------------------------
# A failure from here on must not take the whole test run down with it: say what failed, print no
# URL, and the PostgreSQL tests skip with "ALIGNFORGE_TEST_PG_URL is not set" (visible in -ra).
set -E  # the trap also fires for failures inside the helper functions
trap 'log "PostgreSQL setup failed (line $LINENO): ALIGNFORGE_TEST_PG_URL not set, postgres tests will skip"; exit 0' ERR
if ! command -v pg_lsclusters >/dev/null 2>&1; then
  log "postgresql not available: ALIGNFORGE_TEST_PG_URL not set (postgres tests will skip)"
  exit 0
fi
if [ "$(id -u)" != 0 ] && [ "$(id -un)" != postgres ]; then
  log "not root: not managing PostgreSQL (set ALIGNFORGE_TEST_PG_URL yourself; postgres tests will skip)"
  exit 0
fi
as_postgres() {
  if [ "$(id -un)" = postgres ]; then "$@"; else runuser -u postgres -- "$@"; fi
}

# The first cluster, or a new "main" one for the newest installed version.
read -r ver name port status _ < <(pg_lsclusters -h | head -n 1) || true
if [ -z "${ver:-}" ]; then
  ver=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
  log "creating cluster $ver/main"
  pg_createcluster "$ver" main >&2
  read -r ver name port status _ < <(pg_lsclusters -h | head -n 1)
fi
if [ "$status" != online ]; then
  log "starting cluster $ver/$name on port $port"
  # pg_ctlcluster run as root switches to the cluster's owner (postgres) itself.
  pg_ctlcluster "$ver" "$name" start >&2
else
  log "cluster $ver/$name already online on port $port"
fi
for _ in $(seq 1 30); do
  as_postgres pg_isready -q -p "$port" && break
  sleep 0.5
done

psql_pg() { as_postgres psql -p "$port" -v ON_ERROR_STOP=1 -qtAX "$@"; }
if [ "$(psql_pg -c "SELECT 1 FROM pg_roles WHERE rolname = '$PG_ROLE'")" != 1 ]; then
  log "creating role $PG_ROLE"
  psql_pg -c "CREATE ROLE $PG_ROLE LOGIN CREATEDB PASSWORD '$PG_PASSWORD'" >&2
fi
if [ "$(psql_pg -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" != 1 ]; then
  log "creating database $PG_DB"
  as_postgres createdb -p "$port" -O "$PG_ROLE" "$PG_DB" >&2
fi

echo "export ALIGNFORGE_TEST_PG_URL=postgresql+psycopg://$PG_ROLE:$PG_PASSWORD@127.0.0.1:$port/$PG_DB"
