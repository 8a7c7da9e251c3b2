#!/usr/bin/env bash
# Timeout with real processes: the payments participant consumes charge_payment commands and never answers them.
# Each order's charge step times out, is re-sent with the same command id (the participant sees that id once per
# attempt: 3 attempts under the default policy), then fails; the saga compensates and ends compensated with the
# timeout as its reason; the books balance and every chain verifies. Step timeouts are 3 s here
# (--step-timeout-ms): short, yet long enough for the other steps' first round trips on fresh topics.
set -euo pipefail
export SAGA_BUILD_DIR="$1"
orders="${2:-3}"
source "$(dirname "$0")/../../scripts/lib/common.sh"
source "$SAGA_ROOT/scripts/lib/kafka.sh"
source "$SAGA_ROOT/scripts/lib/order_example.sh"
[ -n "${SAGA_PG_URL:-}" ] || { echo "SAGA_PG_URL is not set: run this through scripts/test" >&2; exit 1; }
work="$SAGA_BUILD/test-timeout"
rm -rf "$work" && mkdir -p "$work"
unset SAGA_KAFKA_BROKERS SAGA_KAFKA_PID
trap 'saga_participants_stop; saga_kafka_stop' EXIT
saga_pg_fresh_database saga_timeout_test
saga_kafka_start "$work/kafka"
export SAGA_KAFKA_PREFIX="to$$"
saga_participants_start "$work/logs" --silent-on charge_payment
orch="$SAGA_BUILD/examples/order-orchestrator"
status=0
timeout 300 "$orch" --orders "$orders" --in-flight "$orders" --step-timeout-ms 3000 --run "to$$" \
  >"$work/orchestrator.log" 2>&1 || status=$?
cat "$work/orchestrator.log"
[ "$status" -eq 0 ] || { echo "order-orchestrator failed ($status)" >&2; exit 1; }
grep -Eq "^  compensated +$orders$" "$work/orchestrator.log" || { echo "not every order was compensated" >&2; exit 1; }
grep -Eq "^    $orders x no reply to attempt 3 within 3000 ms$" "$work/orchestrator.log" ||
  { echo "the compensations do not carry the timeout of attempt 3 as their reason" >&2; exit 1; }
# What the silent participant received: one line per delivery, "silent: charge_payment <command id> attempt <n>".
grep "^silent: charge_payment " "$work/logs/payments.log" | sort | uniq -c | tee "$work/silent.txt"
ids="$(awk '{print $4}' "$work/silent.txt" | sort -u | wc -l)"
[ "$ids" -eq "$orders" ] || { echo "expected $orders distinct charge command ids, saw $ids" >&2; exit 1; }
for id in $(awk '{print $4}' "$work/silent.txt" | sort -u); do
  attempts="$(grep -c "^silent: charge_payment $id attempt " "$work/logs/payments.log")"
  echo "command $id received $attempts times"
  [ "$attempts" -ge 2 ] || { echo "command $id was not re-sent with the same id" >&2; exit 1; }
  for a in 1 2 3; do
    grep -q "^silent: charge_payment $id attempt $a$" "$work/logs/payments.log" ||
      { echo "command $id: attempt $a never arrived" >&2; exit 1; }
  done
done
"$orch" --check-all | tail -n 2
"$SAGA_BUILD/tools/sagactl" list --type order --counts | tee "$work/counts.txt"
"$SAGA_BUILD/tools/sagactl" verify --all --type order | tail -n 1
# Every saga's log: three timed-out attempts of the charge, then the compensation.
for id in $("$SAGA_BUILD/tools/sagactl" list --type order | awk '{print $1}'); do
  "$SAGA_BUILD/tools/sagactl" show "$id" >"$work/show-$id.txt"
  timed_out="$(grep -Ec "step_timed_out +charge_payment " "$work/show-$id.txt" || true)"
  [ "$timed_out" -eq 3 ] || { echo "saga $id: $timed_out charge_payment timeouts, expected 3" >&2; exit 1; }
  grep -q "saga_compensated" "$work/show-$id.txt" || { echo "saga $id did not end compensated" >&2; exit 1; }
done
echo "timeout: $orders orders timed out 3 times on one command id each, then compensated; chains verified"
