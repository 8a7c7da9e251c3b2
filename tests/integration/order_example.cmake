# The multi-process order example end to end (issue: order processing). Needs SAGA_PG_URL (scripts/test).
if(TARGET order-orchestrator AND TARGET order-participant AND TARGET saga-kafka-dev)
  add_test(NAME order_example.multi_process_200_orders
           COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/integration/order_example_test.sh ${PROJECT_BINARY_DIR})
  set_tests_properties(order_example.multi_process_200_orders PROPERTIES LABELS integration TIMEOUT 600)
endif()

if(TARGET order-orchestrator AND TARGET order-participant AND TARGET saga-kafka-dev AND TARGET sagactl)
  add_test(NAME runtime.crash_torture_20_sigkills
           COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/integration/crash_torture_test.sh ${PROJECT_BINARY_DIR} 20)
  set_tests_properties(runtime.crash_torture_20_sigkills PROPERTIES LABELS integration TIMEOUT 1200)
  # The same with static partition ownership (kafka_config::static_assignment): no group, offsets resumed.
  add_test(NAME runtime.crash_torture_20_sigkills_static_partitions
           COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/integration/crash_torture_test.sh ${PROJECT_BINARY_DIR} 20 static)
  set_tests_properties(runtime.crash_torture_20_sigkills_static_partitions PROPERTIES LABELS integration
                                                                                    TIMEOUT 1200)
endif()

if(TARGET order-orchestrator AND TARGET order-participant AND TARGET saga-kafka-dev AND TARGET sagactl)
  add_test(NAME runtime.scale_out_takeover
           COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/integration/scale_out_test.sh ${PROJECT_BINARY_DIR})
  set_tests_properties(runtime.scale_out_takeover PROPERTIES LABELS integration TIMEOUT 900)
endif()

if(TARGET order-orchestrator AND TARGET order-participant AND TARGET saga-kafka-dev AND TARGET sagactl)
  add_test(NAME runtime.reply_partition_count_change_is_refused
           COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/integration/partition_count_test.sh ${PROJECT_BINARY_DIR})
  set_tests_properties(runtime.reply_partition_count_change_is_refused PROPERTIES LABELS integration TIMEOUT 600)
endif()

if(TARGET order-orchestrator AND TARGET order-participant AND TARGET saga-kafka-dev AND TARGET sagactl)
  add_test(NAME runtime.timeout_resend_same_id_then_compensate
           COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/integration/timeout_test.sh ${PROJECT_BINARY_DIR})
  set_tests_properties(runtime.timeout_resend_same_id_then_compensate PROPERTIES LABELS integration TIMEOUT 600)
endif()

if(TARGET order-orchestrator AND TARGET order-participant AND TARGET saga-kafka-dev AND TARGET sagactl)
  add_test(NAME order_example.multi_process_2000_orders_expected_endings
           COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/integration/order_example_2000_test.sh ${PROJECT_BINARY_DIR})
  set_tests_properties(order_example.multi_process_2000_orders_expected_endings PROPERTIES LABELS integration
                                                                                        TIMEOUT 1200)
endif()
