#!/usr/bin/env bash
# The multi-process order example with 200 orders: participants and orchestrator as separate processes over the
# test PostgreSQL (SAGA_PG_URL) and a fresh embedded Kafka broker. Passes when every order ended (completed or
# compensated), the participants' books add up for every order (order-orchestrator checks and exits non-zero
# otherwise) and every saga's hash chain verifies.
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
trap 'saga_participants_stop; saga_kafka_stop' EXIT
saga_kafka_start "$work/kafka"
export SAGA_KAFKA_PREFIX="it$$"
saga_participants_start "$work/logs"
"$SAGA_BUILD/examples/order-orchestrator" --orders 200 --run "it$$-$(date +%s)" | tee "$work/orchestrator.log"
grep -q "completed" "$work/orchestrator.log"
"$SAGA_BUILD/tools/sagactl" verify --all --type order | tail -n 2
example="$(sed -n 's/^compensated example: //p' "$work/orchestrator.log")"
[ -n "$example" ] && "$SAGA_BUILD/tools/sagactl" show "$example" | grep -q "saga_compensated"
echo "multi-process order example: 200 orders ended, books consistent, chains verified"
