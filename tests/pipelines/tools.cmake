# `ruvector produce` / `ruvector broker` (pipelines/rv_source.c, rv_produce.c, rv_broker.c).
set(RV_FASHION_DIR /usr/share/datasets/fashion-mnist)

rv_unit_test(test_source
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_source.c
  LIBS rv_tools PkgConfig::ZLIB
  LABELS unit
  TIMEOUT 60)
target_compile_definitions(test_source PRIVATE RV_FASHION_DIR="${RV_FASHION_DIR}")

rv_unit_test(test_produce_cli
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_produce_cli.c
  LIBS rv_tools
  LABELS unit
  TIMEOUT 60)

rv_unit_test(test_produce_broker
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_produce_broker.c
  LIBS rv_tools PkgConfig::JANSSON
  LABELS integration
  TIMEOUT 120)
target_compile_definitions(test_produce_broker PRIVATE RV_FASHION_DIR="${RV_FASHION_DIR}")
