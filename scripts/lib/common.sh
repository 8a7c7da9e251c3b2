# Shared by scripts/test, scripts/demo and scripts/bench. Source it; it defines functions and variables only.
# shellcheck shell=bash

SAGA_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SAGA_BUILD="${SAGA_BUILD_DIR:-$SAGA_ROOT/build}"
SAGA_PACKAGES=(cmake g++ make pkg-config libpqxx-dev libpq-dev librdkafka-dev libcereal-dev rapidjson-dev libboost-dev
               libboost-system-dev libgtest-dev libgmock-dev libssl-dev postgresql postgresql-client)

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

# Installs the Debian packages that are missing, in one apt-get call; does nothing when all are there.
saga_install_packages() {
  local missing=() p
  for p in "${SAGA_PACKAGES[@]}" "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing missing packages: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# Configures $SAGA_BUILD with the given extra CMake arguments and builds it: every target, or only those named in
# SAGA_BUILD_TARGETS. scripts/test and scripts/demo share build/ with one configuration (tests on), so running one
# never makes the other rebuild or lose its tests; scripts/bench builds Release in build-bench/.
saga_build() {
  say "building in $SAGA_BUILD"
  cmake -S "$SAGA_ROOT" -B "$SAGA_BUILD" -DCMAKE_BUILD_TYPE="${SAGA_BUILD_TYPE:-RelWithDebInfo}" \
    -DSAGA_BUILD_TESTS=ON -DSAGA_BUILD_EXAMPLES=ON "$@" >/dev/null
  local targets=()
  [ -n "${SAGA_BUILD_TARGETS:-}" ] && read -r -a targets <<<"$SAGA_BUILD_TARGETS"
  cmake --build "$SAGA_BUILD" -j"$(nproc)" ${targets[@]:+--target "${targets[@]}"}
}

# saga_build_bench DIR: builds in DIR, as Release, what the benchmarks run (not the tests). scripts/bench builds with it
# before it runs one; scripts/test builds with it too, so a change that breaks the Release build (-O3 finds warnings
# -O2 does not, and warnings are errors) fails the suite instead of the next benchmark.
saga_build_bench() {
  SAGA_BUILD="$1" SAGA_BUILD_TYPE=Release \
    SAGA_BUILD_TARGETS="${SAGA_BUILD_TARGETS:-saga_store_bench transport_bench saga-kafka-dev order-orchestrator order-participant sagactl}" \
    saga_build -DSAGA_BUILD_BENCH=ON
}

# saga_sanitizer_env DIR: every sanitized process of the run (tests, and the orchestrators, participants and brokers
# they start) writes its reports to DIR instead of a stderr that a test may send to a log file, and stops at the
# first one. Suppressions live in tests/sanitizers/, each with a comment saying why the report is not ours.
saga_sanitizer_env() {
  local dir="$1" supp="$SAGA_ROOT/tests/sanitizers"
  rm -rf "$dir" && mkdir -p "$dir"
  export ASAN_OPTIONS="log_path=$dir/asan:abort_on_error=1:detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1"
  export LSAN_OPTIONS="suppressions=$supp/lsan.supp:print_suppressions=0"
  export UBSAN_OPTIONS="log_path=$dir/ubsan:print_stacktrace=1:halt_on_error=1:suppressions=$supp/ubsan.supp"
  export TSAN_OPTIONS="log_path=$dir/tsan:halt_on_error=1:second_deadlock_stack=1:suppressions=$supp/tsan.supp"
}

# saga_sanitizer_reports DIR: prints every report written to DIR; fails when there is one.
saga_sanitizer_reports() {
  local dir="$1" f n=0
  for f in "$dir"/*; do
    [ -s "$f" ] || continue
    n=$((n + 1))
    say "sanitizer report $f"
    head -n 60 "$f"
  done
  if [ "$n" -ne 0 ]; then
    say "$n sanitizer report(s): see above"
    return 1
  fi
  say "no sanitizer report"
}

# saga_fault_table FILE: the fault matrix results (tests/integration/fault_matrix.sh rows) as a Markdown table.
saga_fault_table() {
  echo "| cell | sagas | in flight at the fault | lost | duplicated | deadlines fired | progress after the fault (s) | all ended after the fault (s) | result |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---|"
  sort "$1" | awk -F'\t' '{ printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7, $8, $10 }'
}
