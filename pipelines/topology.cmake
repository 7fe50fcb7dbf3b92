# rv_topology: loads, interpolates and validates topology files (libyaml).
add_library(rv_topology STATIC
  ${CMAKE_CURRENT_LIST_DIR}/rv_topology.c
  ${CMAKE_CURRENT_LIST_DIR}/rv_interp.c)
target_include_directories(rv_topology PUBLIC ${CMAKE_CURRENT_LIST_DIR})
target_link_libraries(rv_topology PUBLIC rv_common PkgConfig::YAML PRIVATE rv_build_flags)
