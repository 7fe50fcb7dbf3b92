#ifndef RV_SCHEMAS_H
#define RV_SCHEMAS_H
/* The Avro schemas of schemas/ (*.avsc), embedded at build time (NUL-terminated JSON). */
extern const char rv_schema_vector_record[];
extern const char rv_schema_changelog_record[];
extern const char rv_schema_position_marker[];
#endif
