# PostgreSQL integration tests (label `integration`): they need SAGA_PG_URL (scripts/test starts a private server).
saga_add_test(saga_postgres_tests LABEL integration TIMEOUT 600
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/postgres_store_test.cpp ${CMAKE_CURRENT_LIST_DIR}/postgres_migrate_test.cpp
          ${CMAKE_CURRENT_LIST_DIR}/postgres_inbox_test.cpp
          ${CMAKE_CURRENT_LIST_DIR}/postgres_hostile_input_test.cpp
  LIBS saga::postgres)

# The crash test stops and restarts the shared test server, so it never runs beside another test (RUN_SERIAL).
add_executable(saga_postgres_crash_tests ${CMAKE_CURRENT_LIST_DIR}/postgres_crash_test.cpp)
target_link_libraries(saga_postgres_crash_tests PRIVATE saga::postgres GTest::gtest GTest::gtest_main saga_warnings)
gtest_discover_tests(saga_postgres_crash_tests PROPERTIES LABELS integration TIMEOUT 600 RUN_SERIAL TRUE
                     DISCOVERY_TIMEOUT 60)
