#!/usr/bin/env bash
# Crash torture: the orchestrator process is killed with SIGKILL at random moments 20 times while 1,000 order sagas
# are in flight (4,000 orders, 1,000 in flight, in the static variant), and restarted each time. At the end every saga
# has ended, the participants' books agree with every ending (each effect happened exactly once: double charges or
# lost releases break the sums), every log's hash chain verifies, and every log is exactly what the definition decides
# when replayed (no saga went backwards).
# MODE (third argument): "group" (default: each orchestrator joins the consumer group on the reply topic) or "static"
# (each owns every reply partition without a group, --static-partitions 0/1, and resumes from its committed offsets).
set -euo pipefail
export SAGA_BUILD_DIR="$1"
kills="${2:-20}"
mode="${3:-group}"
source "$(dirname "$0")/../../scripts/lib/common.sh"
source "$SAGA_ROOT/scripts/lib/kafka.sh"
source "$SAGA_ROOT/scripts/lib/order_example.sh"
saga_orchestrator_membership "$mode" || { echo "usage: crash_torture_test.sh BUILD KILLS [group|static]" >&2; exit 2; }
[ -n "${SAGA_PG_URL:-}" ] || { echo "SAGA_PG_URL is not set: run this through scripts/test" >&2; exit 1; }
work="$SAGA_BUILD/test-crash-torture-$mode"
rm -rf "$work" && mkdir -p "$work"
unset SAGA_KAFKA_BROKERS SAGA_KAFKA_PID
orchestrator_pid=""
cleanup() {
  [ -n "$orchestrator_pid" ] && kill -9 "$orchestrator_pid" 2>/dev/null || true
  saga_participants_stop
  saga_kafka_stop
}
trap cleanup EXIT
# The static variant in a database of its own: its check-all and books then cover its own orders only.
[ "$mode" = static ] && saga_pg_fresh_database saga_crash_torture_static
saga_kafka_start "$work/kafka"
export SAGA_KAFKA_PREFIX="ct$mode$$"
saga_participants_start "$work/logs"
run="ct$$-$(date +%s)"
orch="$SAGA_BUILD/examples/order-orchestrator"
# Placing is idempotent per order (idempotency key = order id), so every restart places the same orders and resumes
# the ones already started from their logs. A static member has its partitions at once after a restart and finishes
# 1,000 orders in a few seconds, so it places more and is killed sooner to be killed mid-flight as often.
if [ "$mode" = static ]; then orders=4000 in_flight=1000 wait_ms=300 spread_ms=1000; else
  orders=1000 in_flight=300 wait_ms=500 spread_ms=2500
fi
killed=0
attempt=0
while [ "$killed" -lt "$kills" ] && [ "$attempt" -lt $((kills * 3)) ]; do
  attempt=$((attempt + 1))
  "$orch" --orders "$orders" --in-flight "$in_flight" --run "$run" "${SAGA_MEMBERSHIP[@]}" >"$work/orchestrator-$attempt.log" 2>&1 &
  orchestrator_pid=$!
  sleep "$(awk -v r="$RANDOM" -v w="$wait_ms" -v s="$spread_ms" 'BEGIN { printf "%.2f", (w + r % s) / 1000 }')"
  if kill -9 "$orchestrator_pid" 2>/dev/null; then
    killed=$((killed + 1))
    echo "kill $killed: SIGKILL after $(grep -c . "$work/orchestrator-$attempt.log") lines of output"
  else
    echo "run $attempt: the orchestrator had already finished"
  fi
  wait "$orchestrator_pid" 2>/dev/null || true
  orchestrator_pid=""
done
if [ "$killed" -lt "$kills" ]; then
  echo "only $killed of $kills SIGKILLs found the orchestrator running in $attempt runs" >&2
  exit 1
fi
echo "final run: no more kills"
timeout 600 "$orch" --orders "$orders" --in-flight "$in_flight" --run "$run" "${SAGA_MEMBERSHIP[@]}" \
  >"$work/orchestrator-final.log" 2>&1 || {
  tail -n 30 "$work/orchestrator-final.log"
  exit 1
}
tail -n 14 "$work/orchestrator-final.log"
"$orch" --check-all | tail -n 5
"$SAGA_BUILD/tools/sagactl" verify --all --type order | tail -n 2
"$SAGA_BUILD/tools/sagactl" replay --all --type order --verify-definition | tail -n 1
echo "crash torture ($mode): $kills SIGKILLs, every saga ended exactly once"
