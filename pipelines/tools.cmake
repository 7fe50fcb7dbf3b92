# rv_tools: `ruvector produce` and `ruvector broker` (record sources, the
# producer, the embedded mock Kafka cluster).
add_library(rv_tools STATIC
  ${CMAKE_CURRENT_LIST_DIR}/rv_source.c
  ${CMAKE_CURRENT_LIST_DIR}/rv_produce.c
  ${CMAKE_CURRENT_LIST_DIR}/rv_broker.c)
target_include_directories(rv_tools PUBLIC ${CMAKE_CURRENT_LIST_DIR})
target_link_libraries(rv_tools
  PUBLIC rv_records rv_kafka rv_remote rv_common PkgConfig::RDKAFKA PkgConfig::JANSSON PkgConfig::ZLIB Threads::Threads m
  PRIVATE rv_build_flags)
