#include "rv_collection.h"

#include <stdio.h>
#include <string.h>

const char *rv_metric_name(rv_metric_t m) {
  switch (m) {
  case RV_METRIC_L2: return "l2";
  case RV_METRIC_COSINE: return "cosine";
  case RV_METRIC_IP: return "ip";
  }
  return "?";
}

int rv_metric_parse(const char *s, rv_metric_t *out) {
  if (!strcmp(s, "l2")) *out = RV_METRIC_L2;
  else if (!strcmp(s, "cosine")) *out = RV_METRIC_COSINE;
  else if (!strcmp(s, "ip")) *out = RV_METRIC_IP;
  else return -1;
  return 0;
}

void rv_collection_default_topics(rv_collection_conf_t *c) {
  if (!c->source_topic[0]) snprintf(c->source_topic, sizeof c->source_topic, "%s.vectors", c->name);
  if (!c->changelog_topic[0]) snprintf(c->changelog_topic, sizeof c->changelog_topic, "%s.changelog", c->name);
  if (!c->dlq_topic[0]) snprintf(c->dlq_topic, sizeof c->dlq_topic, "%s.dlq", c->name);
  if (c->partitions <= 0) c->partitions = 3;
  if (c->schema_id <= 0) c->schema_id = 1;
}
