#!/usr/bin/env bash
# The multi-process order example with 200 orders: participants and orchestrator as separate processes over the
# test PostgreSQL (SAGA_PG_URL, in a database created for the run) and a fresh embedded Kafka broker. Passes when
# every order ended as the example's business rules say (declined cards and invalid addresses compensated, the
# rest completed), the participants' books add up for every order, every saga's hash chain verifies, and a
# compensated order's timeline shows its compensation.
set -euo pipefail
export SAGA_BUILD_DIR="$1"
source "$(dirname "$0")/../../scripts/lib/common.sh"
source "$SAGA_ROOT/scripts/lib/kafka.sh"
source "$SAGA_ROOT/scripts/lib/order_example.sh"
if [ -z "${SAGA_PG_URL:-}" ]; then
  echo "SAGA_PG_URL is not set: run this through scripts/test, which starts a PostgreSQL for the tests" >&2
  exit 1
fi
work="$SAGA_BUILD/test-order-example"
rm -rf "$work"
unset SAGA_KAFKA_BROKERS SAGA_KAFKA_PID
orders=200

# A database of its own, so the shop's stock and balances start full: 200 orders cannot run out of either (each sku
# gets at most 20 orders of at most 4 units against 250; each customer 2 orders of at most 99.99 against 400), and
# every order must end exactly as the business rules say.
fresh_db="order_it_$$"
fresh=0
if saga_pg_fresh_database "$fresh_db"; then
  fresh=1
else
  echo "note: cannot create a database on this server; checking each order against its rules only" >&2
fi
cleanup() {
  saga_participants_stop
  saga_kafka_stop
  if [ "$fresh" = 1 ]; then saga_pg_drop_database "$fresh_db" || true; fi
}
trap cleanup EXIT

saga_kafka_start "$work/kafka"
export SAGA_KAFKA_PREFIX="it$$"
saga_participants_start "$work/logs"
# Exits non-zero when an order did not end, ended against its business rules (listed as UNEXPECTED), or the books
# do not add up.
"$SAGA_BUILD/examples/order-orchestrator" --orders "$orders" --run "it$$-$(date +%s)" | tee "$work/orchestrator.log"
grep -q "^  completed" "$work/orchestrator.log"
if grep -q "^UNEXPECTED" "$work/orchestrator.log"; then
  echo "FAIL: orders ended against the business rules" >&2
  exit 1
fi

# The rules as order-orchestrator generates orders: order i (0-based) is for customer cust-(i % 100), whose card is
# declined when that ends in 7, and goes to "1 Nowhere Lane" (cannot ship) when i % 29 == 5.
# summary_count PATTERN: the number in the first summary line matching PATTERN (a sed regex with one group).
summary_count() { sed -n "s/$1/\\1/p" "$work/orchestrator.log" | head -n 1; }
declined=0 bad_address=0 completed=0
for ((i = 0; i < orders; i++)); do
  if [ $((i % 10)) -eq 7 ]; then
    declined=$((declined + 1))
  elif [ $((i % 29)) -eq 5 ]; then
    bad_address=$((bad_address + 1))
  else
    completed=$((completed + 1))
  fi
done
if [ "$fresh" = 1 ]; then
  check() {
    if [ "$2" != "$3" ]; then
      echo "FAIL: $1: expected $3, got '${2}'" >&2
      exit 1
    fi
  }
  check "completed orders" "$(summary_count '^  completed *\([0-9]*\)$')" "$completed"
  check "compensated orders" "$(summary_count '^  compensated *\([0-9]*\)$')" "$((declined + bad_address))"
  check "declined cards" "$(summary_count '^    \([0-9]*\) x card declined$')" "$declined"
  check "invalid addresses" "$(summary_count '^    \([0-9]*\) x shipping address invalid$')" "$bad_address"
  check "stuck orders" "$(summary_count '^  stuck *\([0-9]*\)$')" "0"
fi

# Every order saga in this database ended as its rules allow, books consistent; every hash chain verifies.
"$SAGA_BUILD/examples/order-orchestrator" --check-all | tail -n 3
"$SAGA_BUILD/tools/sagactl" verify --all --type order | tail -n 2

# The timeline of a compensated order: there must be one (20 of the 200 cards are declined).
example="$(sed -n 's/^compensated example: //p' "$work/orchestrator.log")"
if [ -z "$example" ]; then
  echo "FAIL: no compensated order (card declined) to show" >&2
  exit 1
fi
"$SAGA_BUILD/tools/sagactl" show "$example" >"$work/example-timeline.txt"
grep -q "saga_compensated" "$work/example-timeline.txt" || {
  echo "FAIL: the timeline of compensated order $example has no saga_compensated" >&2
  cat "$work/example-timeline.txt" >&2
  exit 1
}
grep -q "card declined" "$work/example-timeline.txt" || {
  echo "FAIL: the timeline of compensated order $example does not say the card was declined" >&2
  exit 1
}
echo "multi-process order example: $orders orders ended as their rules say ($completed completed, $declined declined," \
  "$bad_address invalid addresses), books consistent, chains verified"
