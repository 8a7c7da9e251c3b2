# Fuzz targets (tests/fuzz/fuzz_*.cpp). Every build replays each target's seed corpus and every input a fuzzer ever
# failed on (tests/fuzz/regressions/<target>/) as a unit test; a clang build with -DSAGA_FUZZ=ON also links each
# target with libFuzzer (scripts/test --fuzz runs them).
set(saga_fuzz_libs_envelope saga::transport)
set(saga_fuzz_libs_event saga::core)
set(saga_fuzz_libs_export saga::storage)
foreach(target IN ITEMS envelope event export)
  add_executable(fuzz_replay_${target} ${CMAKE_CURRENT_LIST_DIR}/fuzz_${target}.cpp ${CMAKE_CURRENT_LIST_DIR}/replay_main.cpp)
  target_link_libraries(fuzz_replay_${target} PRIVATE ${saga_fuzz_libs_${target}} saga_warnings)
  add_test(NAME fuzz_regression.${target}
           COMMAND fuzz_replay_${target} ${CMAKE_CURRENT_LIST_DIR}/corpus/${target}
                   ${CMAKE_CURRENT_LIST_DIR}/regressions/${target})
  set_tests_properties(fuzz_regression.${target} PROPERTIES LABELS unit)
  if(SAGA_FUZZ)
    add_executable(fuzz_${target} ${CMAKE_CURRENT_LIST_DIR}/fuzz_${target}.cpp)
    target_link_libraries(fuzz_${target} PRIVATE ${saga_fuzz_libs_${target}} saga_warnings)
    target_link_options(fuzz_${target} PRIVATE -fsanitize=fuzzer)
  endif()
endforeach()
