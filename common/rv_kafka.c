#include "rv_kafka.h"

#include "rv_err.h"

rd_kafka_conf_t *rv_kafka_conf_new(const char *props[][2], size_t n, const char *what, char *errstr,
                                   size_t errstr_size) {
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  char e[512];
  for (size_t i = 0; i < n; i++) {
    if (rd_kafka_conf_set(conf, props[i][0], props[i][1], e, sizeof e) != RD_KAFKA_CONF_OK) {
      rd_kafka_conf_destroy(conf);
      rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "%s %s: %s", what, props[i][0], e);
      return NULL;
    }
  }
  return conf;
}
