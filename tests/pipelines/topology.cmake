# Topology loading, interpolation and validation (pipelines/rv_topology.c).
rv_unit_test(test_topology
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_topology.c
  LIBS rv_topology
  LABELS unit
  TIMEOUT 30)
target_compile_definitions(test_topology PRIVATE
  RV_TOPOLOGY_TESTDATA="${CMAKE_CURRENT_LIST_DIR}/testdata"
  RV_DEMO_YAML="${PROJECT_SOURCE_DIR}/pipelines/demo.yaml")
