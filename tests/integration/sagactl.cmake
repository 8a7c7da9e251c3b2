# sagactl against a real PostgreSQL (label `integration`; needs SAGA_PG_URL): the sagactl program itself, and
# saga::cli in-process where a test registers its own definitions. Logs are produced by the orchestrator. One test
# sends over the embedded Kafka broker (saga-kafka-dev), or the cluster SAGA_KAFKA_BROKERS names.
saga_add_test(saga_sagactl_tests LABEL integration TIMEOUT 600
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/sagactl_test.cpp
  LIBS saga::cli saga::postgres saga::runtime saga::transport saga::kafka)
target_compile_definitions(saga_sagactl_tests PRIVATE SAGACTL_PATH="$<TARGET_FILE:sagactl>"
                                                   SAGA_KAFKA_DEV_PROGRAM="$<TARGET_FILE:saga-kafka-dev>")
add_dependencies(saga_sagactl_tests sagactl saga-kafka-dev)
