#!/usr/bin/env bash
# A private, throw-away PostgreSQL cluster for tests, on 127.0.0.1 only.
#
#   scripts/postgres.sh start   start it (idempotent) and print its URL on stdout
#   scripts/postgres.sh url     print the URL
#   scripts/postgres.sh env     print `export STREAMSPACE_PG_URL=...` (for eval)
#   scripts/postgres.sh status  exit 0 when it answers
#   scripts/postgres.sh stop    stop it and remove its data dir
#   scripts/postgres.sh halt    stop the server but keep its data (`start` brings it back:
#                               what tests of a database restart use)
#
# Environment:
#   STREAMSPACE_PG_DIR   data + socket + log dir (default /tmp/streamspace-pg)
#   STREAMSPACE_PG_PORT  TCP port on 127.0.0.1 (default 55432)
#   STREAMSPACE_PG_USER  OS user the server runs as when we are root (default streamspace-pg)
#
# Trust auth, superuser `postgres`, fsync off, max_connections=300: for tests only.
set -euo pipefail

ME="postgres.sh"
log() { echo "[$ME] $*" >&2; }
die() { echo "[$ME] ERROR: $*" >&2; exit 1; }

PGDIR="${STREAMSPACE_PG_DIR:-/tmp/streamspace-pg}"
PORT="${STREAMSPACE_PG_PORT:-55432}"
RUN_USER="${STREAMSPACE_PG_USER:-streamspace-pg}"
DATA="$PGDIR/data"
LOGFILE="$PGDIR/postgres.log"
URL="postgres://postgres@127.0.0.1:$PORT/postgres"

PGBIN=""
find_pg() {
  local d
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    PGBIN="$(dirname "$(readlink -f "$(command -v pg_ctl)")")"
  else
    # Debian keeps the server binaries off PATH; take the newest installed major version.
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
      if [[ -x "$d/initdb" && -x "$d/pg_ctl" ]]; then PGBIN="$d"; break; fi
    done
  fi
  [[ -n "$PGBIN" && -x "$PGBIN/pg_isready" && -x "$PGBIN/postgres" ]]
}

ensure_pg() {
  find_pg && return 0
  [[ "$(id -u)" == 0 ]] || die "PostgreSQL server binaries (initdb, pg_ctl) not found; install the Debian package 'postgresql' (needs root)"
  log "initdb/pg_ctl not found: installing the Debian package 'postgresql'"
  # No default 'main' cluster on port 5432: we only want the binaries.
  mkdir -p /etc/postgresql-common/createcluster.d
  echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/streamspace-no-main.conf
  (export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq postgresql) >&2 \
    || die "apt-get install postgresql failed"
  find_pg || die "installed 'postgresql' but still cannot find initdb/pg_ctl/pg_isready (looked on PATH and in /usr/lib/postgresql/*/bin)"
}

# as_pg CMD... : run as the unprivileged server user (PostgreSQL refuses to run as root)
as_pg() {
  if [[ "$(id -u)" == 0 ]]; then
    runuser -u "$RUN_USER" -- "$@"
  else
    "$@"
  fi
}

ensure_user() {
  [[ "$(id -u)" == 0 ]] || return 0
  if ! id -u "$RUN_USER" >/dev/null 2>&1; then
    log "creating system user $RUN_USER"
    useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$RUN_USER" \
      || die "could not create system user $RUN_USER (useradd)"
  fi
}

ready() { "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -t 2; }

running() { [[ -f "$DATA/postmaster.pid" ]] && as_pg "$PGBIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; }

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

cmd_start() {
  ensure_pg
  ensure_user
  if running && ready; then
    log "already running ($DATA, port $PORT)"
    echo "$URL"
    return 0
  fi
  if ! running && port_in_use; then
    die "127.0.0.1:$PORT is already in use by another process (set STREAMSPACE_PG_PORT)"
  fi

  mkdir -p "$PGDIR"
  if [[ "$(id -u)" == 0 ]]; then chown "$RUN_USER:" "$PGDIR"; fi
  chmod 700 "$PGDIR"
  as_pg test -w "$PGDIR" || die "$RUN_USER cannot write $PGDIR (a parent directory is not traversable?); set STREAMSPACE_PG_DIR"

  if [[ ! -f "$DATA/PG_VERSION" ]]; then
    rm -rf "$DATA"
    log "initdb $DATA ($("$PGBIN/postgres" --version))"
    as_pg "$PGBIN/initdb" -D "$DATA" -U postgres --auth=trust --encoding=UTF8 --locale=C --no-sync >"$PGDIR/initdb.log" 2>&1 \
      || { tail -n 20 "$PGDIR/initdb.log" >&2; die "initdb failed (log: $PGDIR/initdb.log)"; }
    as_pg tee -a "$DATA/postgresql.conf" >/dev/null <<EOF

# --- streamspace test settings (scripts/postgres.sh) ---
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$PGDIR'
max_connections = 300
shared_buffers = 128MB
fsync = off
synchronous_commit = off
full_page_writes = off
log_min_messages = warning
EOF
    as_pg tee "$DATA/pg_hba.conf" >/dev/null <<EOF
# TYPE  DATABASE  USER  ADDRESS        METHOD
local   all       all                  trust
host    all       all   127.0.0.1/32   trust
EOF
  fi

  if ! running; then
    log "starting PostgreSQL on 127.0.0.1:$PORT (log $LOGFILE)"
    as_pg "$PGBIN/pg_ctl" -D "$DATA" -l "$LOGFILE" -w -t 60 start >/dev/null \
      || { tail -n 30 "$LOGFILE" >&2 2>/dev/null || true; die "pg_ctl start failed (log: $LOGFILE)"; }
  fi
  local deadline=$((SECONDS + 60))
  until ready; do
    (( SECONDS < deadline )) || { tail -n 30 "$LOGFILE" >&2 || true; die "PostgreSQL did not answer pg_isready on 127.0.0.1:$PORT within 60s"; }
    sleep 0.2
  done
  log "ready: $URL"
  echo "$URL"
}

cmd_stop() {
  if [[ ! -d "$PGDIR" ]]; then
    log "not running (no $PGDIR)"
    return 0
  fi
  find_pg || true
  local pid="" i
  [[ -f "$DATA/postmaster.pid" ]] && pid="$(head -1 "$DATA/postmaster.pid" 2>/dev/null || true)"
  if [[ -n "$PGBIN" && -n "$pid" ]]; then
    log "stopping PostgreSQL ($DATA)"
    as_pg "$PGBIN/pg_ctl" -D "$DATA" -m fast -w -t 30 stop >/dev/null 2>&1 \
      || as_pg "$PGBIN/pg_ctl" -D "$DATA" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
  fi
  # pg_ctl returns once postmaster.pid is gone; wait for the process itself too.
  if [[ -n "$pid" ]]; then
    for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      log "postmaster $pid still running: killing it"
      kill -KILL "$pid" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
  fi
  rm -rf "$PGDIR"
  log "stopped; removed $PGDIR"
}

cmd_halt() {
  find_pg || die "PostgreSQL binaries not found"
  running || { log "not running"; return 0; }
  log "halting PostgreSQL ($DATA kept)"
  as_pg "$PGBIN/pg_ctl" -D "$DATA" -m fast -w -t 30 stop >/dev/null \
    || die "pg_ctl stop failed (log: $LOGFILE)"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  halt) cmd_halt ;;
  url) echo "$URL" ;;
  env) echo "export STREAMSPACE_PG_URL=$URL" ;;
  status)
    find_pg || die "PostgreSQL binaries not found"
    if ready; then echo "running: $URL"; else echo "not running"; exit 1; fi ;;
  *) echo "usage: $0 start|stop|halt|url|env|status" >&2; exit 2 ;;
esac
