# rv_pipelines: runs a topology in-process. ruvector: the executable.
add_library(rv_pipelines STATIC ${CMAKE_CURRENT_LIST_DIR}/rv_runner.c ${CMAKE_CURRENT_LIST_DIR}/rv_ingest_cmd.c
  ${CMAKE_CURRENT_LIST_DIR}/rv_metrics_http.c ${CMAKE_CURRENT_LIST_DIR}/rv_index_cmd.c
  ${CMAKE_CURRENT_LIST_DIR}/rv_replica_metrics.c
  ${CMAKE_CURRENT_LIST_DIR}/rv_serve_cmd.c ${CMAKE_CURRENT_LIST_DIR}/rv_http_probe.c)
target_include_directories(rv_pipelines PUBLIC ${CMAKE_CURRENT_LIST_DIR})
target_link_libraries(rv_pipelines PUBLIC rv_topology rv_tools rv_ingest rv_index_applier rv_index_pgload rv_serve rv_embedded
  PkgConfig::JANSSON PRIVATE PkgConfig::LWS Threads::Threads rv_build_flags)

add_executable(ruvector ${CMAKE_CURRENT_LIST_DIR}/main.c)
target_compile_definitions(ruvector PRIVATE RV_VERSION="${PROJECT_VERSION}")
target_link_libraries(ruvector PRIVATE rv_pipelines rv_index_bench rv_build_flags)
set_target_properties(ruvector PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR})
