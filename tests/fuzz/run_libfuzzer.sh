#!/usr/bin/env bash
# Coverage-guided fuzzing of every target for a bounded time each, with
# libFuzzer (a build configured with CC=clang -DRV_FUZZ=ON, see README.md).
#
#   tests/fuzz/run_libfuzzer.sh BUILD_DIR SECONDS [TARGET...]
#
# Each target starts from its committed seeds (tests/fuzz/corpus/<target>) and
# writes what it finds into a scratch corpus under BUILD_DIR/fuzz-scratch, so
# the committed seeds stay small. A crash, leak, timeout (10 s per input) or
# out-of-memory (2 GiB) stops that target, is saved as
# BUILD_DIR/fuzz-artifacts/<target>-<kind>-<sha1>, and makes the script exit 1
# after the other targets ran. CI runs 20 s each; for hours, pass 3600 or more.
set -uo pipefail
src="$(cd "$(dirname "$0")" && pwd)"
build="${1:?usage: run_libfuzzer.sh BUILD_DIR SECONDS [TARGET...]}"
secs="${2:?usage: run_libfuzzer.sh BUILD_DIR SECONDS [TARGET...]}"
shift 2
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(fuzz_avro fuzz_topology fuzz_protocol fuzz_ingest_decode fuzz_source
                                     fuzz_snapshot fuzz_hnsw_stream fuzz_quantizer fuzz_registry_response)
declare -A dict=([fuzz_topology]=yaml.dict [fuzz_protocol]=json.dict [fuzz_ingest_decode]=json.dict
                 [fuzz_source]=json.dict [fuzz_registry_response]=avsc.dict)
# The one third-party leak we accept, named: Avro-C 1.11.1's
# avro_schema_from_json_length leaks parts of a schema it refuses, e.g. the
# second definition of a named type defined twice
# (findings/fuzz_registry_response/leak-avro-duplicate-named-type). libavro has
# no frame pointers, so only the slow unwinder sees that function on the stack
# (fast_unwind_on_malloc=0, for this target only: it slows every malloc).
supp="$build/fuzz-lsan.supp"
echo "leak:avro_schema_from_json_length" > "$supp"
mkdir -p "$build/fuzz-artifacts"
failed=()
for t in "${targets[@]}"; do
  bin="$build/tests/fuzz/$t"
  [ -x "$bin" ] || { echo "run_libfuzzer: $bin is not built"; failed+=("$t"); continue; }
  scratch="$build/fuzz-scratch/$t"
  mkdir -p "$scratch"
  args=(-max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
        -artifact_prefix="$build/fuzz-artifacts/$t-")
  [ -n "${dict[$t]:-}" ] && args+=(-dict="$src/${dict[$t]}")
  asan=""
  [ "$t" = fuzz_registry_response ] && asan="fast_unwind_on_malloc=0"
  start=$(date +%s)
  if ASAN_OPTIONS="$asan" LSAN_OPTIONS="use_unaligned=1:suppressions=$supp" "$bin" "${args[@]}" "$scratch" "$src/corpus/$t" \
       > "$build/fuzz-artifacts/$t.log" 2>&1; then
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$build/fuzz-artifacts/$t.log" | grep -o '[0-9]*$')
    cov=$(grep -o 'cov: [0-9]*' "$build/fuzz-artifacts/$t.log" | tail -1)
    echo "fuzz: $t: ok, ${execs:-?} inputs in $(( $(date +%s) - start )) s, $cov"
  else
    echo "fuzz: $t: FAILED (log: $build/fuzz-artifacts/$t.log)"
    grep -E 'ERROR|SUMMARY|runtime error|Test unit written' "$build/fuzz-artifacts/$t.log" | head -8
    failed+=("$t")
  fi
done
n=${#targets[@]}
echo "fuzz: $((n - ${#failed[@]})) passed, ${#failed[@]} failed"
[ ${#failed[@]} -eq 0 ]
