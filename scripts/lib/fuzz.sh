#!/usr/bin/env bash
# scripts/test --fuzz [SECONDS]: builds the libFuzzer targets (tests/fuzz/) with clang, ASan and UBSan in build-fuzz/
# and runs each for SECONDS (default 60), starting from its seed corpus. An input that fails is copied to
# tests/fuzz/regressions/<target>/ (commit it: every build replays it as the unit test fuzz_regression.<target>) and
# the run fails.
set -euo pipefail
source "$(dirname "$0")/common.sh"
seconds="${1:-60}"
saga_install_packages clang libclang-rt-14-dev
build="${SAGA_FUZZ_BUILD_DIR:-$SAGA_ROOT/build-fuzz}"
say "building the fuzz targets with clang in $build"
cmake -S "$SAGA_ROOT" -B "$build" -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSAGA_FUZZ=ON \
  -DSAGA_SANITIZE=address,undefined -DSAGA_BUILD_BENCH=OFF -DSAGA_BUILD_EXAMPLES=OFF >/dev/null
targets=(envelope event export)
cmake --build "$build" -j"$(nproc)" --target "${targets[@]/#/fuzz_}"
# Reports go to the fuzzer's log; the suppressions are the sanitized builds' (each with its reason).
supp="$SAGA_ROOT/tests/sanitizers"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:suppressions=$supp/ubsan.supp"
export LSAN_OPTIONS="suppressions=$supp/lsan.supp:print_suppressions=0"
status=0
for t in "${targets[@]}"; do
  corpus="$build/fuzz-corpus/$t" artifacts="$build/fuzz-artifacts/$t"
  rm -rf "$artifacts" && mkdir -p "$corpus" "$artifacts"  # only this run's failures are saved
  say "fuzzing $t for $seconds s"
  if ! "$build/tests/fuzz_$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="$artifacts/" "$corpus" "$SAGA_ROOT/tests/fuzz/corpus/$t" >"$build/fuzz-$t.log" 2>&1; then
    status=1
    tail -n 40 "$build/fuzz-$t.log"
    mkdir -p "$SAGA_ROOT/tests/fuzz/regressions/$t"
    for f in "$artifacts"/*; do
      [ -f "$f" ] || continue
      cp "$f" "$SAGA_ROOT/tests/fuzz/regressions/$t/"
      say "saved $(basename "$f") to tests/fuzz/regressions/$t/ (a regression input from now on)"
    done
  fi
  grep -E '^stat::number_of_executed_units|^stat::peak_rss_mb|cov: ' "$build/fuzz-$t.log" | tail -n 3
done
[ "$status" -eq 0 ] && say "fuzzing found nothing in ${seconds} s per target" || say "fuzzing FAILED: see above"
exit "$status"
