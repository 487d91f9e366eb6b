#!/usr/bin/env bash
# The published protocol on CIFAR-10 (docs/reproduce.md): each job distils with a `*-code` preset
# and evaluates the set with its code's evaluation (`atomdd methods` names it), in turn. Every step
# resumes: rerun the same command after a stop and it continues where it was.
#
#   bash benchmarks/reproduce.sh datadam-code:1 atom-code:1 dm-code:1:5000    # method:IPC[:iterations]
#
# DATA (default ../shared/data) holds cifar-10-batches-py/; OUT (default
# benchmarks/results/cifar10-reproduce) is a grid, as `atomdd grid` lays one out (`atomdd report OUT`
# tabulates it): ipc<IPC>/<method>[_iterations_<N>]-seed0/.
set -euo pipefail
DATA=${DATA:-../shared/data}
OUT=${OUT:-benchmarks/results/cifar10-reproduce}
for job in "$@"; do
  IFS=: read -r method ipc iterations <<< "$job"
  dir="$OUT/ipc$ipc/$method${iterations:+_iterations_$iterations}-seed0"
  atomdd distill --dataset cifar10 --data-root "$DATA" --ipc "$ipc" --method "$method" \
    ${iterations:+--iterations "$iterations"} --out "$dir" --resume-or-start --quiet
  preset=$(python -c "from atomdd.methods import get_method; print(get_method('$method').evaluation)")
  atomdd evaluate "$dir" --preset "$preset" --data-root "$DATA" --test-limit 1000 > "$dir/eval.txt"
  if [ "$preset" = datadam-code ]; then  # and with the instance-norm ConvNet (docs/reproduce.md)
    atomdd evaluate "$dir" --preset "$preset" --models convnet --data-root "$DATA" --test-limit 1000 \
      --out "$dir/eval-instance-norm" > "$dir/eval-instance-norm.txt"
  fi
done
