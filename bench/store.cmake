# Store benchmark: group-committed appends vs single-row transactions (`scripts/bench store`).
add_executable(saga_store_bench ${CMAKE_CURRENT_LIST_DIR}/store_bench.cpp)
target_link_libraries(saga_store_bench PRIVATE saga::postgres saga_warnings)
set_target_properties(saga_store_bench PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/bench)
