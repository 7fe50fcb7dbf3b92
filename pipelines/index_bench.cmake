# rv_index_bench: `ruvector index-bench` (the HNSW engine over a base and a query set).
add_library(rv_index_bench STATIC ${CMAKE_CURRENT_LIST_DIR}/rv_index_bench.c)
target_include_directories(rv_index_bench PUBLIC ${CMAKE_CURRENT_LIST_DIR})
target_link_libraries(rv_index_bench PUBLIC rv_index rv_tools Threads::Threads PRIVATE rv_build_flags)
