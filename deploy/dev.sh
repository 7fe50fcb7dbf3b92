#!/usr/bin/env bash
# Local development entry point; the README's two quick-start commands.
#
#   deploy/dev.sh demo    install what is missing, build, run pipelines/demo.yaml (embedded
#                         Kafka, PostgreSQL and Redis) and load the Fashion-MNIST training set
#   deploy/dev.sh test    install what is missing, build, run the whole test suite (ctest); then
#                         the unit and integration tests again under AddressSanitizer and
#                         UBSan (build-asan/), the concurrency tests under ThreadSanitizer
#                         (build-tsan/), and every fuzz target for RV_FUZZ_SECONDS (default 20)
#                         of coverage-guided libFuzzer (clang, build-libfuzzer/); prints how long
#                         each part took
#   deploy/dev.sh bench   build and run the benchmarks under tests/bench/ (minutes; not part of test)
#   deploy/dev.sh deps    only install the Debian packages
#   deploy/dev.sh build   only configure and build (into build/)
#
# Environment: RV_CMAKE_FLAGS adds CMake flags (CI sets -DRV_WERROR=ON);
# RV_CTEST_ARGS adds ctest arguments (e.g. "-L unit").
set -euo pipefail
cd "$(dirname "$0")/.."

DEPS=(build-essential cmake pkg-config
      librdkafka-dev libavro-dev libpq-dev libhiredis-dev libwebsockets-dev libxxhash-dev
      libjansson-dev libyaml-dev libcmocka-dev zlib1g-dev libcurl4-openssl-dev
      postgresql-15 postgresql-client-15 postgresql-15-partman pgbouncer redis-server kcat dataset-fashion-mnist
      python3 python3-numpy python3-websocket python3-hnswlib gnuplot-nox libopenblas0-pthread
      clang libclang-rt-14-dev ccache)
# The kafkajs integration test needs Node.js and npm; Debian's are enough,
# but an existing `node` on PATH is used as it is.
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || DEPS+=(nodejs npm)

deps() {
  local missing=()
  for p in "${DEPS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "deploy/dev.sh: installing Debian packages: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# ccache makes the three extra builds of `test` cheap where the sources agree.
LAUNCHER=()
command -v ccache >/dev/null 2>&1 && LAUNCHER=(-DCMAKE_C_COMPILER_LAUNCHER=ccache)

build() {
  # shellcheck disable=SC2086
  cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo "${LAUNCHER[@]}" ${RV_CMAKE_FLAGS:-} >/dev/null
  cmake --build build -j"$(nproc)"
}

# Runs "$@" as one named part of `test` and prints how long it took.
T0=$(date +%s)
part() {
  local name=$1 start
  shift
  start=$(date +%s)
  echo "== $name"
  "$@"
  echo "== $name: $(( $(date +%s) - start )) s (total $(( $(date +%s) - T0 )) s)"
}

unit_tests() {
  # Independent Kafka/Avro clients for the kafkajs test (versions pinned in package-lock.json).
  (cd tests/integration/node && npm ci --no-audit --no-fund --loglevel=error)
  # shellcheck disable=SC2086
  (cd build && ctest --output-on-failure --timeout 900 -j2 ${RV_CTEST_ARGS:-})
}

# The unit and integration tests again with AddressSanitizer (LeakSanitizer
# on) and UBSan, findings fatal. Fault tests stay on the plain build: they
# time kills and restarts, which the sanitizers' slowdown would distort.
asan_tests() {
  # shellcheck disable=SC2086
  cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DRV_SANITIZE=address,undefined "${LAUNCHER[@]}" \
    ${RV_CMAKE_FLAGS:-} >/dev/null
  cmake --build build-asan -j"$(nproc)"
  (cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    ctest --output-on-failure --timeout 900 -j2 -L 'unit|integration')
}

# The engine's concurrency claims, checked by ThreadSanitizer: only the
# tests that exercise them (librdkafka is not TSan-instrumented).
tsan_tests() {
  local tsan=(test_hnsw_concurrency test_attrs test_filter test_replica_concurrency test_pgwriter_flight)
  # shellcheck disable=SC2086
  cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DRV_SANITIZE=thread "${LAUNCHER[@]}" \
    ${RV_CMAKE_FLAGS:-} >/dev/null
  cmake --build build-tsan -j"$(nproc)" --target "${tsan[@]}"
  (IFS='|'; cd build-tsan && TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" \
    ctest --output-on-failure --timeout 900 -R "^(${tsan[*]})\$")
}

# Coverage-guided fuzzing, a bounded time per target (tests/fuzz/README.md).
fuzz_tests() {
  local targets=(fuzz_avro fuzz_topology fuzz_protocol fuzz_ingest_decode fuzz_source fuzz_snapshot
                 fuzz_hnsw_stream fuzz_quantizer fuzz_registry_response)
  # shellcheck disable=SC2086
  CC=clang cmake -S . -B build-libfuzzer -DCMAKE_BUILD_TYPE=RelWithDebInfo -DRV_FUZZ=ON \
    -DRV_SANITIZE=address,undefined "${LAUNCHER[@]}" ${RV_CMAKE_FLAGS:-} >/dev/null
  cmake --build build-libfuzzer -j"$(nproc)" --target "${targets[@]}"
  tests/fuzz/run_libfuzzer.sh build-libfuzzer "${RV_FUZZ_SECONDS:-20}" "${targets[@]}"
}

case "${1:-}" in
  demo)
    deps
    build
    exec ./build/ruvector pipeline run pipelines/demo.yaml \
      --load /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ;;
  test)
    deps
    part build build
    part tests unit_tests
    part asan asan_tests
    part tsan tsan_tests
    part fuzz fuzz_tests ;;
  bench)
    deps
    build
    cmake --build build --target bench_kernels bench_ingest bench_subs
    ./build/tests/bench/bench_kernels
    /usr/bin/python3 tests/bench/bench_hnsw.py --ruvector build/ruvector --out build/bench
    ./build/tests/bench/bench_ingest
    ./build/tests/bench/bench_subs ;;
  deps) deps ;;
  build) deps; build ;;
  *)
    sed -n '2,16p' "$0"
    exit 64 ;;
esac
