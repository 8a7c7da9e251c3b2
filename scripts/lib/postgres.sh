# A private PostgreSQL for tests, the demo and benchmarks. Source it after common.sh.
# shellcheck shell=bash

# saga_pg_start DIR: starts a private server in DIR (initdb on first use), listening on a Unix socket in DIR and a
# free loopback port, owned by the postgres user when run as root. Exports SAGA_PG_URL (through the socket) and, for
# tests that restart the server, SAGA_PG_DATA, SAGA_PG_BIN and SAGA_PG_RUNAS. SAGA_PG_SERVER_OPTIONS adds server
# options ("-c name=value ..."), e.g. a preloaded extension for a benchmark.
saga_pg_start() {
  local dir="$1" bindir port try
  bindir="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  SAGA_PG_RUNAS=""
  if [ "$(id -u)" -eq 0 ]; then
    chown -R postgres:postgres "$dir"
    SAGA_PG_RUNAS="postgres"
    # The postgres user must reach the folder; a checkout under a private home may not allow it.
    if ! runuser -u postgres -- test -w "$dir"; then
      dir="$(mktemp -d /tmp/saga-pg.XXXXXX)"
      chmod 755 "$dir"
      chown postgres:postgres "$dir"
      echo "note: $1 is not reachable by the postgres user; using $dir" >&2
    fi
  fi
  _saga_pg() { if [ -n "$SAGA_PG_RUNAS" ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    _saga_pg "$bindir/initdb" -D "$dir/data" -A trust -U saga -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 ||
      { cat "$dir/initdb.log" >&2; return 1; }
  fi
  mkdir -p "$dir/sock" && [ -n "$SAGA_PG_RUNAS" ] && chown postgres:postgres "$dir/sock"
  # A server left running in this data folder by an interrupted earlier run is ours: stop it first.
  if _saga_pg "$bindir/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    echo "note: stopping a server left running in $dir by an earlier run" >&2
    _saga_pg "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
  fi
  for try in 1 2 3 4 5 6 7 8 9 10; do
    port=$(( 20000 + (RANDOM % 30000) ))
    if _saga_pg "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 -o "$(_saga_pg_options "$port" "$dir/sock")" \
        start >/dev/null 2>&1; then
      break
    fi
    port=""
  done
  if [ -z "$port" ]; then
    echo "could not start PostgreSQL in $dir; its log:" >&2
    tail -n 30 "$dir/server.log" >&2
    return 1
  fi
  _saga_pg "$bindir/psql" -h "$dir/sock" -p "$port" -U saga -d postgres -qAtc \
    "SELECT 1 FROM pg_database WHERE datname='saga'" | grep -q 1 ||
    _saga_pg "$bindir/createdb" -h "$dir/sock" -p "$port" -U saga saga
  # Clients connect through the Unix socket: on one box it costs less CPU than loopback TCP (the order saga bench ran
  # 0-25 % more sagas/s at 200 in flight in eight interleaved pairs). The server listens on 127.0.0.1 too.
  export SAGA_PG_URL="postgresql://saga@$(_saga_pg_uri_encode "$dir/sock"):$port/saga"
  export SAGA_PG_DATA="$dir/data" SAGA_PG_BIN="$bindir" SAGA_PG_RUNAS SAGA_PG_PORT="$port" SAGA_PG_SOCKET="$dir/sock"
  SAGA_PG_STARTED_DIR="$dir"
}

# _saga_pg_uri_encode TEXT: TEXT percent-encoded for a URI's host part (a socket folder's slashes become %2F).
_saga_pg_uri_encode() {
  local LC_ALL=C s="$1" out="" c i
  for ((i = 0; i < ${#s}; i++)); do
    c="${s:i:1}"
    case "$c" in
      [A-Za-z0-9._~-]) out+="$c" ;;
      *) out+="$(printf '%%%02X' "'$c")" ;;
    esac
  done
  printf '%s' "$out"
}

# The server's options: loopback and a Unix socket only.
_saga_pg_options() {
  echo "-c listen_addresses=127.0.0.1 -p $1 -k $2 -c max_connections=200 -c shared_buffers=256MB ${SAGA_PG_SERVER_OPTIONS:-}"
}

# saga_pg_restart_immediate [DOWN_SECONDS]: kills the server saga_pg_start started (pg_ctl stop -m immediate: no
# shutdown checkpoint, like a crash), waits DOWN_SECONDS (default 2) and starts it again on the same port. Fault
# tests only; needs SAGA_PG_DATA (a server named by SAGA_PG_URL alone is never restarted).
saga_pg_restart_immediate() {
  [ -n "${SAGA_PG_DATA:-}" ] || { echo "saga_pg_restart_immediate: no private server (SAGA_PG_DATA)" >&2; return 1; }
  local as=()
  [ -n "${SAGA_PG_RUNAS:-}" ] && as=(runuser -u "$SAGA_PG_RUNAS" --)
  "${as[@]}" "$SAGA_PG_BIN/pg_ctl" -D "$SAGA_PG_DATA" -m immediate -w stop >/dev/null
  sleep "${1:-2}"
  "${as[@]}" "$SAGA_PG_BIN/pg_ctl" -D "$SAGA_PG_DATA" -l "$SAGA_PG_DATA/../server.log" -w -t 60 \
    -o "$(_saga_pg_options "$SAGA_PG_PORT" "$SAGA_PG_SOCKET")" start >/dev/null
}

# saga_pg_stop: stops the server saga_pg_start started (no-op otherwise).
saga_pg_stop() {
  [ -n "${SAGA_PG_STARTED_DIR:-}" ] || return 0
  _saga_pg "$SAGA_PG_BIN/pg_ctl" -D "$SAGA_PG_STARTED_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
  SAGA_PG_STARTED_DIR=""
}
