#!/usr/bin/env bash
# Issue 19's figure for the lent GPU machine's 16 cores: the fleet rate at which the policy server keeps
# p99 <= 50 ms (and < 0.1 % errors), against the number of replicas. The GPU is not used: Serve, the
# ONNX policy and the load generator all run on the CPUs, the load generator on the same host.
#
#   here, once:  bash cluster/gpu_machine.sh prepare-serve       # .gpu/serve: site.tar.xz + bundle/
#   there:       the device's run tool, carry [".gpu/serve"], command:
#                  bash cluster/gpu_serve_bench.sh
#                with, optionally, REPLICAS=2,4,8 RATES=400x400,700x700,1000x1000 DURATION=20 SMOKE=1
#
# Installs Ray 2.60 + Serve's extras + polars into /tmp/site (about 1 min), runs a 3-s smoke test (a failed
# install stops here, cheaply), then tests/benchmarks/bench_serve.py once per replica count (each its own
# JSON, so that a run cut short keeps what finished): serve:default (HAProxy ingress, throughput-optimised,
# as `gridrl serve` starts it) on a local Ray of all the machine's CPUs, production mode, the write-ahead
# decision log on, RATExSITES loads (SITES distinct site ids at 1 Hz each). Results go to $OUT
# (runs/gpu_serve here): bench_serve_rN.json and bench_serve.log.
set -euo pipefail

OUT=${OUT:-runs/gpu_serve}
REPLICAS=${REPLICAS:-2,4,8}
RATES=${RATES:-400x400,700x700,1000x1000}
DURATION=${DURATION:-20}
SMOKE=${SMOKE:-1}
BUNDLE=${BUNDLE:-.gpu/serve/bundle}
mkdir -p "$OUT"

bash cluster/gpu_machine.sh install-serve
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
CPUS=$(nproc)
{
  echo "cpus $CPUS; $(grep -m1 'model name' /proc/cpuinfo); load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "replicas $REPLICAS; rates $RATES; duration $DURATION s"
} | tee "$OUT/bench_serve.log"

bench() {  # bench OUTFILE ARGS...: one bench_serve run, bounded in time, its log appended
  local out=$1
  shift
  timeout --signal=INT 280 python3 tests/benchmarks/bench_serve.py --bundle "$BUNDLE" --servers serve:default \
    --num-cpus "$CPUS" --out "$out" "$@" 2>&1 | grep -v -E 'fork_posix|^\s*$' | tee -a "$OUT/bench_serve.log"
}

if [ "$SMOKE" = 1 ]; then
  bench "$OUT/smoke.json" --replicas 2 --rates 50x10 --duration 3
fi
for n in ${REPLICAS//,/ }; do
  bench "$OUT/bench_serve_r$n.json" --replicas "$n" --rates "$RATES" --duration "$DURATION" \
    || echo "bench_serve with $n replicas failed (exit $?)" | tee -a "$OUT/bench_serve.log"
done
