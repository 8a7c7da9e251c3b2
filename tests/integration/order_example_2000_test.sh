#!/usr/bin/env bash
# End to end at size: 2,000 order sagas through the four participant processes over the embedded broker, in a
# database of their own with stock and money to spare, so that every ending is known in advance: the 10% of orders
# whose customer ends in 7 are declined at payment and end compensated ("card declined"), orders to "1 Nowhere
# Lane" are refused by shipping and end compensated, every other order completes (order-orchestrator
# --expect-outcomes checks each one). Every participant effect happened exactly once: the books match every ending,
# and the participants' inbox holds exactly one row per command the endings call for.
set -euo pipefail
export SAGA_BUILD_DIR="$1"
orders="${2:-2000}"
source "$(dirname "$0")/../../scripts/lib/common.sh"
source "$SAGA_ROOT/scripts/lib/kafka.sh"
source "$SAGA_ROOT/scripts/lib/order_example.sh"
[ -n "${SAGA_PG_URL:-}" ] || { echo "SAGA_PG_URL is not set: run this through scripts/test" >&2; exit 1; }
work="$SAGA_BUILD/test-order-example-2000"
rm -rf "$work" && mkdir -p "$work"
unset SAGA_KAFKA_BROKERS SAGA_KAFKA_PID
trap 'saga_participants_stop; saga_kafka_stop' EXIT
saga_pg_fresh_database saga_e2e_test
saga_kafka_start "$work/kafka"
export SAGA_KAFKA_PREFIX="e2e$$"
saga_participants_start "$work/logs" --stock 1000000 --balance 100000000
status=0
timeout 900 "$SAGA_BUILD/examples/order-orchestrator" --orders "$orders" --in-flight 200 --expect-outcomes \
  --run "e2e$$" >"$work/orchestrator.log" 2>&1 || status=$?
tail -n 20 "$work/orchestrator.log"
[ "$status" -eq 0 ] || { echo "order-orchestrator failed ($status)" >&2; exit 1; }
# The endings by the order index i (0-based) order-orchestrator derives the order from.
read -r declined nowhere completed < <(awk -v n="$orders" 'BEGIN {
  for (i = 0; i < n; i++) { if (i % 100 % 10 == 7) d++; else if (i % 29 == 5) w++; else c++ }
  print d + 0, w + 0, c + 0 }')
echo "expected: $completed completed, $declined declined at payment, $nowhere refused by shipping"
grep -Eq "^  completed +$completed$" "$work/orchestrator.log" || { echo "completed count is not $completed" >&2; exit 1; }
grep -Eq "^    $declined x card declined$" "$work/orchestrator.log" ||
  { echo "not $declined sagas compensated for a declined card" >&2; exit 1; }
grep -Eq "^    $nowhere x shipping address invalid$" "$work/orchestrator.log" ||
  { echo "not $nowhere sagas compensated for a refused address" >&2; exit 1; }
grep -q "^outcomes: $orders of $orders ended as expected$" "$work/orchestrator.log"
# Commands per ending: completed 5 (create, reserve, charge, ship, approve); declined 5 (create, reserve, the
# refused charge, release, cancel); refused by shipping 7 (create, reserve, charge, the refused shipment, refund,
# release, cancel). The inbox stores one row per command id it executed (a repeat is answered from that row).
expected_rows=$((completed * 5 + declined * 5 + nowhere * 7))
rows="$("${SAGA_PG_BIN:+$SAGA_PG_BIN/}psql" "$SAGA_PG_URL" -qAtc "SELECT count(*) FROM saga_inbox")"
echo "participant inbox: $rows commands executed, $expected_rows expected"
[ "$rows" -eq "$expected_rows" ] || { echo "commands executed ($rows) != commands the endings call for" >&2; exit 1; }
"$SAGA_BUILD/examples/order-orchestrator" --check-all | tail -n 1
"$SAGA_BUILD/tools/sagactl" verify --all --type order | tail -n 1
echo "end to end: $orders orders ended as expected, each participant effect exactly once, chains verified"
