# Runs the multi-process order example: the four participant services and the orchestrator as separate
# processes over PostgreSQL and Kafka. Source it after common.sh, postgres.sh and kafka.sh, with SAGA_PG_URL and
# SAGA_KAFKA_BROKERS set. Shared by scripts/demo and the integration test.
# shellcheck shell=bash

SAGA_PARTICIPANT_PIDS=()

# saga_orchestrator_membership MODE: sets SAGA_MEMBERSHIP to the order-orchestrator arguments for MODE: "group" (join
# the consumer group on the reply topic) or "static" (own every reply partition without a group, --static-partitions
# 0/1). Fails naming MODE otherwise.
saga_orchestrator_membership() {
  case "$1" in
    group) SAGA_MEMBERSHIP=() ;;
    static) SAGA_MEMBERSHIP=(--static-partitions 0/1) ;;
    *) echo "MODE is group or static, not '$1'" >&2; return 2 ;;
  esac
}

# saga_pg_fresh_database NAME: (re)creates the empty database NAME on the server SAGA_PG_URL points at and points
# SAGA_PG_URL at it (keeping the URL's parameters, e.g. ?sslmode=…), so a test's sagas and books are its own.
# SAGA_PG_SERVER_URL keeps the URL it was given, for saga_pg_drop_database.
saga_pg_fresh_database() {
  local name="$1" psql="${SAGA_PG_BIN:+$SAGA_PG_BIN/}psql" query="" path
  export SAGA_PG_SERVER_URL="${SAGA_PG_SERVER_URL:-$SAGA_PG_URL}"
  "$psql" "$SAGA_PG_SERVER_URL" -qAtc "DROP DATABASE IF EXISTS $name WITH (FORCE)" >/dev/null &&
    "$psql" "$SAGA_PG_SERVER_URL" -qAtc "CREATE DATABASE $name" >/dev/null || return 1
  case "$SAGA_PG_SERVER_URL" in *\?*) query="?${SAGA_PG_SERVER_URL#*\?}" ;; esac
  path="${SAGA_PG_SERVER_URL%%\?*}"
  export SAGA_PG_URL="${path%/*}/$name$query"
}

# saga_pg_drop_database NAME: drops what saga_pg_fresh_database created (no-op when it created nothing).
saga_pg_drop_database() {
  [ -n "${SAGA_PG_SERVER_URL:-}" ] || return 0
  "${SAGA_PG_BIN:+$SAGA_PG_BIN/}psql" "$SAGA_PG_SERVER_URL" -qAtc "DROP DATABASE IF EXISTS $1 WITH (FORCE)" >/dev/null
}

# saga_participants_start LOGDIR [ARGS...]: starts one order-participant per service with ARGS (e.g. --silent-on
# charge_payment, --stock 100000), logs in LOGDIR.
saga_participants_start() {
  local logs="$1" s
  shift
  mkdir -p "$logs"
  for s in orders inventory payments shipping; do
    # Own sessions: on Ctrl-C the caller stops them in order, after the orchestrator, while the broker is up.
    setsid "$SAGA_BUILD/examples/order-participant" "$s" "$@" >"$logs/$s.log" 2>&1 &
    SAGA_PARTICIPANT_PIDS+=($!)
  done
  # Each prints "ready" once it consumes its topic; a participant that died says why in its log.
  for s in orders inventory payments shipping; do
    for _ in $(seq 1 300); do
      grep -q "ready" "$logs/$s.log" 2>/dev/null && break
      sleep 0.1
    done
    grep -q "ready" "$logs/$s.log" || { echo "participant $s did not start:" >&2; cat "$logs/$s.log" >&2; return 1; }
  done
}

# saga_participant_pid NAME: the PID of the participant service NAME this shell started.
saga_participant_pid() {
  case "$1" in
    orders) echo "${SAGA_PARTICIPANT_PIDS[0]}" ;;
    inventory) echo "${SAGA_PARTICIPANT_PIDS[1]}" ;;
    payments) echo "${SAGA_PARTICIPANT_PIDS[2]}" ;;
    shipping) echo "${SAGA_PARTICIPANT_PIDS[3]}" ;;
    *) echo "no participant service '$1'" >&2; return 1 ;;
  esac
}

# saga_participant_kill NAME: SIGKILLs the participant service NAME (a crash: no clean shutdown).
saga_participant_kill() {
  local pid
  pid="$(saga_participant_pid "$1")"
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# saga_participant_restart NAME LOGDIR [ARGS...]: starts the participant service NAME again (after a kill).
saga_participant_restart() {
  local s="$1" logs="$2" i
  shift 2
  case "$s" in orders) i=0 ;; inventory) i=1 ;; payments) i=2 ;; shipping) i=3 ;; esac
  setsid "$SAGA_BUILD/examples/order-participant" "$s" "$@" >>"$logs/$s.log" 2>&1 &
  SAGA_PARTICIPANT_PIDS[$i]=$!
}

# saga_participants_stop: stops the participants this shell started (by PID).
saga_participants_stop() {
  local p
  for p in "${SAGA_PARTICIPANT_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${SAGA_PARTICIPANT_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  SAGA_PARTICIPANT_PIDS=()
}
