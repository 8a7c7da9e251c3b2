#!/usr/bin/env bash
# A reply topic whose partition count changed under unfinished sagas. Orders are placed while the topic has four
# partitions and no participant answers; the orchestrator is killed with SIGKILL. The topic comes back with six
# partitions (a new broker: as if it had been recreated): the orchestrator refuses to run, naming the type and both
# counts, and touches nothing; `sagactl partitions` shows the 4 recorded. With four partitions again and the
# participants up, it recovers and finishes every order; the books balance and every chain verifies.
set -euo pipefail
export SAGA_BUILD_DIR="$1"
source "$(dirname "$0")/../../scripts/lib/common.sh"
source "$SAGA_ROOT/scripts/lib/kafka.sh"
source "$SAGA_ROOT/scripts/lib/order_example.sh"
[ -n "${SAGA_PG_URL:-}" ] || { echo "SAGA_PG_URL is not set: run this through scripts/test" >&2; exit 1; }
work="$SAGA_BUILD/test-partition-count"
rm -rf "$work" && mkdir -p "$work"
unset SAGA_KAFKA_BROKERS SAGA_KAFKA_PID
orchestrator=""
cleanup() {
  [ -z "$orchestrator" ] || kill -9 "$orchestrator" 2>/dev/null || true
  saga_participants_stop
  saga_kafka_stop
}
trap cleanup EXIT
saga_pg_fresh_database saga_partition_count_test
export SAGA_KAFKA_PREFIX="pc$$"
topic="$SAGA_KAFKA_PREFIX.order.replies"
orch="$SAGA_BUILD/examples/order-orchestrator"
sagactl="$SAGA_BUILD/tools/sagactl"
orders=40

saga_kafka_start "$work/kafka-4" --topic "$topic:4"
"$orch" --orders "$orders" --in-flight "$orders" --run "pc$$" >"$work/first.log" 2>&1 &
orchestrator=$!
for _ in $(seq 1 600); do
  placed="$("$sagactl" list --type order 2>/dev/null | wc -l || true)"
  [ "$placed" -lt "$orders" ] || break
  kill -0 "$orchestrator" 2>/dev/null || { cat "$work/first.log"; echo "the orchestrator died" >&2; exit 1; }
  sleep 0.1
done
kill -9 "$orchestrator" && echo "orchestrator killed with SIGKILL, $placed orders placed over 4 reply partitions"
wait "$orchestrator" 2>/dev/null || true
orchestrator=""
[ "$placed" -eq "$orders" ] || { echo "expected $orders orders placed, found $placed" >&2; exit 1; }
saga_kafka_stop
"$sagactl" list --type order --counts | tee "$work/counts-before.txt"

saga_kafka_start "$work/kafka-6" --topic "$topic:6"
status=0
timeout 120 "$orch" --resume-only >"$work/refused.log" 2>&1 || status=$?
cat "$work/refused.log"
[ "$status" -ne 0 ] || { echo "the orchestrator ran over 6 partitions" >&2; exit 1; }
grep -q "saga type 'order': its reply topic has 6 partitions, but its unfinished sagas were placed over 4" \
  "$work/refused.log" || { echo "the refusal does not name the type and both counts" >&2; exit 1; }
"$sagactl" list --type order --counts >"$work/counts-refused.txt"
cmp -s "$work/counts-before.txt" "$work/counts-refused.txt" || { echo "the refused run changed sagas" >&2; exit 1; }
# What an operator sees: the count the unfinished orders were placed over, and none of them beyond it.
"$sagactl" partitions --type order | tee "$work/partitions.txt"
grep -Eq "^order  placed over 4 reply partitions \(since [^)]*\)  $orders unfinished, highest partition [0-3]$" \
  "$work/partitions.txt" || { echo "sagactl partitions does not show the 4 recorded partitions" >&2; exit 1; }
saga_kafka_stop

saga_kafka_start "$work/kafka-4-again" --topic "$topic:4"
saga_participants_start "$work/logs"
status=0
timeout 300 "$orch" --resume-only >"$work/resumed.log" 2>&1 || status=$?
tail -n 5 "$work/resumed.log"
[ "$status" -eq 0 ] || { echo "the orchestrator failed to resume ($status)" >&2; exit 1; }
"$sagactl" list --type order --counts | tee "$work/counts-after.txt"
if grep -Eq "running|compensating|stuck" "$work/counts-after.txt"; then
  echo "unfinished orders are left" >&2
  exit 1
fi
"$orch" --check-all | tail -n 2
"$sagactl" verify --all --type order | tail -n 1
echo "partition count: refused over 6 reply partitions, every order finished over the 4 it was placed over"
