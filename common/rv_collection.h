#ifndef RV_COLLECTION_H
#define RV_COLLECTION_H
/* What every stage knows of a collection. Plain values (fixed arrays), so a
 * stage copies it and owns nothing; the pipelines module fills it from a topology. */

typedef enum { RV_METRIC_L2 = 0, RV_METRIC_COSINE = 1, RV_METRIC_IP = 2 } rv_metric_t;

typedef enum { RV_FIELD_KEYWORD = 0, RV_FIELD_NUMBER = 1 } rv_field_type_t;

#define RV_NAME_MAX 64
#define RV_TOPIC_MAX 192
#define RV_MAX_FIELDS 16
#define RV_ID_MAX 512 /* bytes of UTF-8 in a vector id */

typedef struct rv_field_conf {
  char name[RV_NAME_MAX]; /* metadata key that becomes a filter attribute */
  rv_field_type_t type;
} rv_field_conf_t;

typedef struct rv_collection_conf {
  char name[RV_NAME_MAX];              /* [a-z][a-z0-9_]*, also the SQL table name */
  int dim;                             /* vector length, 1..65536 */
  rv_metric_t metric;
  int partitions;                      /* partitions of the source and changelog topics */
  char source_topic[RV_TOPIC_MAX];     /* default <name>.vectors */
  char changelog_topic[RV_TOPIC_MAX];  /* default <name>.changelog */
  char dlq_topic[RV_TOPIC_MAX];        /* default <name>.dlq */
  int schema_id;                       /* Confluent schema id the source schema is known by (default 1) */
  rv_field_conf_t fields[RV_MAX_FIELDS];
  int n_fields;
} rv_collection_conf_t;

/* "l2", "cosine", "ip" */
const char *rv_metric_name(rv_metric_t m);
/* Parses a metric name; returns 0 on success, -1 if unknown. */
int rv_metric_parse(const char *s, rv_metric_t *out);
/* Fills the topic names left empty with their defaults from the collection name. */
void rv_collection_default_topics(rv_collection_conf_t *c);

#endif
