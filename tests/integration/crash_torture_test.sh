#!/usr/bin/env bash
# Crash torture: the orchestrator process is killed with SIGKILL at random moments 20 times while 1,000 order sagas
# are in flight, and restarted each time. At the end every saga has ended, the participants' books agree with every
# ending (each effect happened exactly once: double charges or lost releases break the sums), every log's hash chain
# verifies, and every log is exactly what the definition decides when replayed (no saga went backwards).
set -euo pipefail
export SAGA_BUILD_DIR="$1"
kills="${2:-20}"
source "$(dirname "$0")/../../scripts/lib/common.sh"
source "$SAGA_ROOT/scripts/lib/kafka.sh"
source "$SAGA_ROOT/scripts/lib/order_example.sh"
[ -n "${SAGA_PG_URL:-}" ] || { echo "SAGA_PG_URL is not set: run this through scripts/test" >&2; exit 1; }
work="$SAGA_BUILD/test-crash-torture"
rm -rf "$work" && mkdir -p "$work"
unset SAGA_KAFKA_BROKERS SAGA_KAFKA_PID
orchestrator_pid=""
cleanup() {
  [ -n "$orchestrator_pid" ] && kill -9 "$orchestrator_pid" 2>/dev/null || true
  saga_participants_stop
  saga_kafka_stop
}
trap cleanup EXIT
saga_kafka_start "$work/kafka"
export SAGA_KAFKA_PREFIX="ct$$"
saga_participants_start "$work/logs"
run="ct$$-$(date +%s)"
orch="$SAGA_BUILD/examples/order-orchestrator"
# Placing is idempotent per order (idempotency key = order id), so every restart places the same 1,000 orders and
# resumes the ones already started from their logs.
for i in $(seq 1 "$kills"); do
  "$orch" --orders 1000 --in-flight 300 --run "$run" >"$work/orchestrator-$i.log" 2>&1 &
  orchestrator_pid=$!
  sleep "$(awk -v r="$RANDOM" 'BEGIN { printf "%.2f", 0.5 + (r % 2500) / 1000 }')"
  if kill -9 "$orchestrator_pid" 2>/dev/null; then
    echo "kill $i: SIGKILL after $(grep -c . "$work/orchestrator-$i.log") lines of output"
  else
    echo "kill $i: the orchestrator had already finished"
  fi
  wait "$orchestrator_pid" 2>/dev/null || true
  orchestrator_pid=""
done
echo "final run: no more kills"
timeout 600 "$orch" --orders 1000 --in-flight 300 --run "$run" >"$work/orchestrator-final.log" 2>&1 || {
  tail -n 30 "$work/orchestrator-final.log"
  exit 1
}
tail -n 14 "$work/orchestrator-final.log"
"$orch" --check-all | tail -n 5
"$SAGA_BUILD/tools/sagactl" verify --all --type order | tail -n 2
"$SAGA_BUILD/tools/sagactl" replay --all --type order --verify-definition | tail -n 1
echo "crash torture: $kills SIGKILLs, every saga ended exactly once"
