#ifndef RV_MALLOC_H
#define RV_MALLOC_H
/* glibc malloc settings for the streaming commands (ruvector ingest,
 * pipeline run, broker).
 *
 * Every batch allocates and frees a few buffers of tens of megabytes: Kafka
 * fetch responses and produce requests (librdkafka, and the embedded mock
 * broker's log), the batch's rows and its COPY data. With glibc's defaults
 * each thread allocates from an arena of its own, whose heaps are unmapped
 * as soon as they empty, and big blocks are mmapped and unmapped one by one,
 * so the next batch faults the same amount in again and the kernel zeroes
 * every page: in bench_ingest that was about 0.7 s of CPU per 60,000
 * vectors, on the two CPUs PostgreSQL needs.
 *
 * rv_malloc_tune keeps that memory in the process instead: one arena, blocks
 * up to 32 MB from the heap, and up to 512 MB of free heap top kept rather
 * than returned. It does nothing when GLIBC_TUNABLES sets any glibc.malloc
 * tunable (the operator chose). Call before starting threads. Returns 1 when
 * it applied the settings. */
int rv_malloc_tune(void);

#endif
