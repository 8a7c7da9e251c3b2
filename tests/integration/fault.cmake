# The fault matrix (label `fault`): each cell runs the multi-process order example under load (>= 500 sagas in
# flight), injects one fault with real process kills, the embedded broker's fault injection or pg_ctl, and checks that
# every saga ended, every effect happened exactly once and every log verifies. Needs SAGA_PG_URL (scripts/test).
if(TARGET order-orchestrator AND TARGET order-participant AND TARGET saga-kafka-dev AND TARGET sagactl)
  # Forges duplicated, stale and unknown-saga replies on a reply topic for the reply cells.
  add_executable(saga-fault-replies ${CMAKE_CURRENT_LIST_DIR}/fault_replies_main.cpp)
  target_link_libraries(saga-fault-replies PRIVATE saga::kafka saga_warnings)

  foreach(cell IN ITEMS orchestrator_sigkill participant_sigkill postgres_restart broker_down_up produce_errors
                        broker_data_lost duplicated_replies stale_replies unknown_saga_replies clock_jump)
    add_test(NAME fault.${cell}
             COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/fault_matrix.sh ${PROJECT_BINARY_DIR} ${cell})
    set_tests_properties(fault.${cell} PROPERTIES LABELS fault TIMEOUT 900 RUN_SERIAL TRUE)
  endforeach()
endif()
