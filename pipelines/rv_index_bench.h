#ifndef RV_INDEX_BENCH_H
#define RV_INDEX_BENCH_H
/* `ruvector index-bench`: builds the HNSW engine over a base set and searches
 * it with a query set on one thread, so anyone can check the engine's figures
 * with their own ground truth:
 *
 *   ruvector index-bench --base FILE --queries FILE [--mode float|sq8|pq]
 *       [--metric l2|cosine|ip] [--M 16] [--ef-construction 100] [--threads 1]
 *       [--ef 64[,128,...]] [--k 10] [--limit N] [--pq-m M] [--rerank N]
 *       [--out FILE.ivecs] [--gt FILE.ivecs]
 *
 * Inputs are anything rv_source reads without metadata (.fvecs, IDX image
 * files, gzipped or not). Result ids are 0-based row numbers of the base
 * file, written as .ivecs (per query: int32 k, then k int32 ids; rows with
 * fewer hits are padded with -1). With several --ef values and --out X.ivecs
 * the files are X.ef<EF>.ivecs. --gt (an .ivecs of true neighbours, at least
 * k per query) adds recall@k to the report.
 *
 * Prints one line per figure, `key=value` separated by spaces, so scripts can
 * read it: build_seconds, bytes_per_vector (graph and codes), float_bytes_per_vector
 * (vectors kept beside the graph for re-ranking), then per ef: query_seconds,
 * qps and recall. Returns a process exit code. */
int rv_index_bench_main(int argc, char **argv);

#endif
