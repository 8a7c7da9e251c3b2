#!/usr/bin/env bash
# Scale-out: two orchestrator processes share the work through the Kafka consumer group on the reply topic. One is
# killed with SIGKILL mid-flight; the other takes over its partitions, recovers those sagas from their logs and
# finishes them. Every saga ends, the books balance, every chain verifies (one linear history per saga: no seq was
# stored twice), and every log replays exactly under the definition.
set -euo pipefail
export SAGA_BUILD_DIR="$1"
source "$(dirname "$0")/../../scripts/lib/common.sh"
source "$SAGA_ROOT/scripts/lib/kafka.sh"
source "$SAGA_ROOT/scripts/lib/order_example.sh"
[ -n "${SAGA_PG_URL:-}" ] || { echo "SAGA_PG_URL is not set: run this through scripts/test" >&2; exit 1; }
work="$SAGA_BUILD/test-scale-out"
rm -rf "$work" && mkdir -p "$work"
unset SAGA_KAFKA_BROKERS SAGA_KAFKA_PID
a="" b=""
cleanup() {
  for p in $a $b; do kill -9 "$p" 2>/dev/null || true; done
  saga_participants_stop
  saga_kafka_stop
}
trap cleanup EXIT
saga_kafka_start "$work/kafka"
export SAGA_KAFKA_PREFIX="so$$"
saga_participants_start "$work/logs"
orch="$SAGA_BUILD/examples/order-orchestrator"
"$orch" --orders 600 --in-flight 300 --run "A$$" >"$work/a.log" 2>&1 &
a=$!
"$orch" --orders 600 --in-flight 300 --run "B$$" --until-idle >"$work/b.log" 2>&1 &
b=$!
sleep 4
kill -9 "$a" && echo "orchestrator A killed with SIGKILL"
wait "$a" 2>/dev/null || true
a=""
status=0
wait "$b" || status=$?
b=""
tail -n 16 "$work/b.log"
[ "$status" -eq 0 ] || { echo "orchestrator B failed ($status)"; exit 1; }
recovered="$(sed -n 's/^  recovered *\([0-9]*\).*/\1/p' "$work/b.log")"
echo "orchestrator B took over $recovered sagas"
[ "${recovered:-0}" -gt 0 ] || { echo "B recovered nothing: A's sagas were not taken over" >&2; exit 1; }
"$orch" --check-all | tail -n 3
"$SAGA_BUILD/tools/sagactl" verify --all --type order | tail -n 1
"$SAGA_BUILD/tools/sagactl" replay --all --type order --verify-definition | tail -n 1
echo "scale-out: the survivor finished the killed orchestrator's sagas"
