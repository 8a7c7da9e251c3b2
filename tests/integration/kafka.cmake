# Kafka transport: envelope and participant unit tests (no servers), integration tests over the embedded broker.
saga_add_test(kafka_envelope_test LABEL unit SOURCES ${CMAKE_CURRENT_LIST_DIR}/kafka_envelope_test.cpp
              LIBS saga::transport)
saga_add_test(kafka_participant_test LABEL unit SOURCES ${CMAKE_CURRENT_LIST_DIR}/kafka_participant_test.cpp
              LIBS saga::transport)

# The participant inbox uses PostgreSQL when saga::postgres exists in this build (postgres_inbox), else memory.
set(saga_kafka_test_pg 0)
set(saga_kafka_test_pg_libs)
if(TARGET saga::postgres AND EXISTS ${PROJECT_SOURCE_DIR}/storage/include/saga/storage/postgres_inbox.hpp)
  set(saga_kafka_test_pg 1)
  set(saga_kafka_test_pg_libs saga::postgres)
endif()

add_executable(saga_kafka_test_participant ${CMAKE_CURRENT_LIST_DIR}/kafka_participant_main.cpp)
target_link_libraries(saga_kafka_test_participant PRIVATE saga::kafka ${saga_kafka_test_pg_libs} saga_warnings)
target_compile_definitions(saga_kafka_test_participant PRIVATE SAGA_HAVE_POSTGRES_INBOX=${saga_kafka_test_pg})

saga_add_test(kafka_transport_test LABEL integration TIMEOUT 900
              SOURCES ${CMAKE_CURRENT_LIST_DIR}/kafka_transport_test.cpp
              LIBS saga::kafka ${saga_kafka_test_pg_libs})
target_compile_definitions(kafka_transport_test PRIVATE
  SAGA_HAVE_POSTGRES_INBOX=${saga_kafka_test_pg}
  SAGA_KAFKA_DEV_PROGRAM="$<TARGET_FILE:saga-kafka-dev>"
  SAGA_KAFKA_TEST_PARTICIPANT="$<TARGET_FILE:saga_kafka_test_participant>")
add_dependencies(kafka_transport_test saga-kafka-dev saga_kafka_test_participant)

# Limits and secrets: no server needed.
saga_add_test(kafka_limits_test LABEL unit SOURCES ${CMAKE_CURRENT_LIST_DIR}/kafka_limits_test.cpp
              LIBS saga::kafka saga::postgres)
