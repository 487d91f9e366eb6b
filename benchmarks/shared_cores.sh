#!/usr/bin/env bash
# `atomdd demo` alone and beside one busy process (a second program using one core, as a browser or
# another job does), under OpenMP settings: PyTorch's threads wait for each other at every parallel
# region, and where a core is taken the wait is a whole scheduler slice. Each run has a time limit
# (LIMIT s; rc 124: it ran past it). Run it on an otherwise idle machine:
#
#     bash benchmarks/shared_cores.sh | tee benchmarks/results/shared_cores.txt
set -uo pipefail
LIMIT=${LIMIT:-150}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"; kill "${busy:-}" 2>/dev/null' EXIT

run() {  # label, then the environment of the run
    local label=$1 t0 rc
    shift
    rm -rf "$OUT/demo"
    t0=$(date +%s.%N)
    env "$@" timeout "$LIMIT" atomdd demo --out "$OUT/demo" --quiet > "$OUT/log" 2>&1
    rc=$?
    printf '%-60s %6.1f s  (rc %s) %s\n' "$label" "$(echo "$(date +%s.%N) - $t0" | bc)" "$rc" \
        "$(grep -o 'ATOM − random: [^(]*' "$OUT/log")"
}

echo "$(nproc) cores, $(python -c 'import torch; print(torch.get_num_threads())') PyTorch threads by default"
run "alone, default" X=1
run "alone, OMP_WAIT_POLICY=PASSIVE" OMP_WAIT_POLICY=PASSIVE
run "alone, GOMP_SPINCOUNT=10000" GOMP_SPINCOUNT=10000
run "alone, OMP_NUM_THREADS=1" OMP_NUM_THREADS=1
python -c "while True: pass" &
busy=$!
run "beside a busy process, default" X=1
run "beside a busy process, OMP_WAIT_POLICY=PASSIVE" OMP_WAIT_POLICY=PASSIVE
run "beside a busy process, GOMP_SPINCOUNT=10000" GOMP_SPINCOUNT=10000
run "beside a busy process, OMP_NUM_THREADS=1" OMP_NUM_THREADS=1
