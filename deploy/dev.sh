#!/usr/bin/env bash
# Local development entry point; the README's two quick-start commands.
#
#   deploy/dev.sh demo    install what is missing, build, run pipelines/demo.yaml (embedded
#                         Kafka, PostgreSQL and Redis) and load the Fashion-MNIST training set
#   deploy/dev.sh test    install what is missing, build, run the whole test suite (ctest), then
#                         the concurrency tests again under ThreadSanitizer (build-tsan/)
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
      python3 python3-numpy python3-websocket python3-hnswlib gnuplot-nox libopenblas0-pthread)
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

build() {
  # shellcheck disable=SC2086
  cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo ${RV_CMAKE_FLAGS:-} >/dev/null
  cmake --build build -j"$(nproc)"
}

case "${1:-}" in
  demo)
    deps
    build
    exec ./build/ruvector pipeline run pipelines/demo.yaml \
      --load /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ;;
  test)
    deps
    build
    # Independent Kafka/Avro clients for the kafkajs test (versions pinned in package-lock.json).
    (cd tests/integration/node && npm ci --no-audit --no-fund --loglevel=error)
    # shellcheck disable=SC2086
    (cd build && ctest --output-on-failure --timeout 900 -j2 ${RV_CTEST_ARGS:-})
    # The engine's concurrency claims, checked by ThreadSanitizer: only the
    # tests that exercise them (librdkafka is not TSan-instrumented).
    tsan=(test_hnsw_concurrency test_attrs test_filter test_replica_concurrency test_pgwriter_flight)
    # shellcheck disable=SC2086
    cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DRV_SANITIZE=thread ${RV_CMAKE_FLAGS:-} >/dev/null
    cmake --build build-tsan -j"$(nproc)" --target "${tsan[@]}"
    (IFS='|'; cd build-tsan && TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" \
      ctest --output-on-failure --timeout 900 -R "^(${tsan[*]})\$") ;;
  bench)
    deps
    build
    cmake --build build --target bench_kernels bench_ingest
    ./build/tests/bench/bench_kernels
    /usr/bin/python3 tests/bench/bench_hnsw.py --ruvector build/ruvector --out build/bench
    ./build/tests/bench/bench_ingest ;;
  deps) deps ;;
  build) deps; build ;;
  *)
    sed -n '2,16p' "$0"
    exit 64 ;;
esac
