#ifndef RV_KAFKA_H
#define RV_KAFKA_H
/* Small librdkafka helpers shared by every stage that talks to Kafka. */
#include <librdkafka/rdkafka.h>
#include <stddef.h>

/* Returns a new configuration with each {name, value} of props set, in order.
 * On failure returns NULL (nothing leaks) with errstr "<what> <name>: <reason>".
 * The caller owns the result until rd_kafka_new takes it. */
rd_kafka_conf_t *rv_kafka_conf_new(const char *props[][2], size_t n, const char *what, char *errstr,
                                   size_t errstr_size);

#define RV_KAFKA_PROPS(a) (a), (sizeof(a) / sizeof((a)[0]))

#endif
