# Request/reply through the embedded broker: kafka_transport + participant vs a bare librdkafka pair (the ceiling).
find_package(PkgConfig REQUIRED)
pkg_check_modules(RDKAFKA REQUIRED IMPORTED_TARGET rdkafka)
add_executable(transport_bench ${CMAKE_CURRENT_LIST_DIR}/transport_bench.cpp
                               ${PROJECT_SOURCE_DIR}/transport/bench/rdkafka_baseline.cpp)
target_link_libraries(transport_bench PRIVATE saga::kafka PkgConfig::RDKAFKA saga_warnings)
target_compile_definitions(transport_bench PRIVATE SAGA_KAFKA_DEV_PROGRAM="$<TARGET_FILE:saga-kafka-dev>")
add_dependencies(transport_bench saga-kafka-dev)
