# `ruvector serve` pieces (pipelines/rv_serve_cmd.c, rv_http_probe.c) and serve
# readiness with in-process shards or a conf.ready hook, over loopback.
rv_unit_test(test_serve_cmd
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_serve_cmd.c
  LIBS rv_pipelines
  LABELS unit
  TIMEOUT 30)
