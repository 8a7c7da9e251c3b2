# The embedded Kafka broker (saga-kafka-dev) for tests, the demo and benchmarks. Source it after common.sh.
# shellcheck shell=bash

# saga_kafka_start DIR: starts saga-kafka-dev from the build tree in the background (log in DIR/broker.log), waits
# for its bootstrap file and exports SAGA_KAFKA_BROKERS and SAGA_KAFKA_CONTROL. When SAGA_KAFKA_BROKERS is already
# set, a real cluster is meant: nothing is started. Extra arguments go to saga-kafka-dev (e.g. --topic t:6).
saga_kafka_start() {
  local dir="$1" bin try
  shift
  if [ -n "${SAGA_KAFKA_BROKERS:-}" ] && [ -z "${SAGA_KAFKA_PID:-}" ]; then
    echo "using the Kafka cluster at SAGA_KAFKA_BROKERS=$SAGA_KAFKA_BROKERS" >&2
    return 0
  fi
  bin="${SAGA_KAFKA_DEV:-$SAGA_BUILD/transport/saga-kafka-dev}"
  if [ ! -x "$bin" ]; then
    echo "saga-kafka-dev not found at $bin (build target saga-kafka-dev first)" >&2
    return 1
  fi
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  rm -f "$dir/bootstrap" "$dir/control"
  # Its own session: a Ctrl-C at the terminal must not stop the broker before the clients that use it.
  setsid "$bin" --bootstrap-file "$dir/bootstrap" --control-file "$dir/control" "$@" >"$dir/broker.log" 2>&1 &
  SAGA_KAFKA_PID=$!
  for try in $(seq 1 300); do
    [ -s "$dir/bootstrap" ] && break
    if ! kill -0 "$SAGA_KAFKA_PID" 2>/dev/null; then
      echo "saga-kafka-dev exited; its log:" >&2
      cat "$dir/broker.log" >&2
      SAGA_KAFKA_PID=""
      return 1
    fi
    sleep 0.1
  done
  if [ ! -s "$dir/bootstrap" ]; then
    echo "saga-kafka-dev wrote no bootstrap file in 30 s" >&2
    saga_kafka_stop
    return 1
  fi
  SAGA_KAFKA_BROKERS="$(head -n 1 "$dir/bootstrap")"
  SAGA_KAFKA_CONTROL="$(head -n 1 "$dir/control")"
  export SAGA_KAFKA_BROKERS SAGA_KAFKA_CONTROL SAGA_KAFKA_PID
}

# saga_kafka_control LINE: sends one control line (down 1, up 1, produce_errors 5 NOT_LEADER_FOR_PARTITION, rtt 1 20,
# create_topic NAME PARTITIONS, leader TOPIC PARTITION BROKER) and prints the answer; fails on "error …".
saga_kafka_control() {
  local answer
  [ -n "${SAGA_KAFKA_CONTROL:-}" ] || { echo "SAGA_KAFKA_CONTROL is not set" >&2; return 1; }
  exec 9<>"/dev/tcp/${SAGA_KAFKA_CONTROL%:*}/${SAGA_KAFKA_CONTROL##*:}" || return 1
  printf '%s\n' "$*" >&9
  read -r answer <&9
  exec 9<&- 9>&-
  echo "$answer"
  [ "${answer%% *}" = "ok" ]
}

# saga_kafka_stop: stops the broker saga_kafka_start started (by its PID; no-op otherwise).
saga_kafka_stop() {
  [ -n "${SAGA_KAFKA_PID:-}" ] || return 0
  kill "$SAGA_KAFKA_PID" 2>/dev/null || true
  wait "$SAGA_KAFKA_PID" 2>/dev/null || true
  SAGA_KAFKA_PID=""
  unset SAGA_KAFKA_BROKERS SAGA_KAFKA_CONTROL
}
