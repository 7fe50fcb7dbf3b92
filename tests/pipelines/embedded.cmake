rv_unit_test(test_embedded SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_embedded.c
  LIBS rv_embedded PkgConfig::PQ LABELS integration TIMEOUT 180)
