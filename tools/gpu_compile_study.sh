#!/usr/bin/env bash
# Compile time and step time of the paper U-Net's RealUID cycle: each compile setting in a cold process, then the
# same setting again in a second process (inductor's on-disk cache warm). Run from the repository root, with
# realuid importable and REALUID_CIFAR10 pointing at the CIFAR-10 shards:
#   bash tools/gpu_compile_study.sh OUT_DIR [COMPILE ...]     (default COMPILE: regional)
set -euo pipefail
out=${1:?usage: gpu_compile_study.sh OUT_DIR [COMPILE ...]}; shift
settings=("${@:-regional}")
mkdir -p "$out"
for c in "${settings[@]}"; do
  for pass in cold warm; do
    python3 tools/bench_step.py --precision bf16 --compile "$c" --warmup 3 --repeats 10 --profile 12 \
      -b "CheckpointTeacher.allow_random_init = True" -b "TrainingLoop.device = 'cuda'" \
      --out "$out/bench_step_${c}_${pass}.json"
  done
done
