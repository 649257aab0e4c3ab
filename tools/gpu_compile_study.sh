#!/usr/bin/env bash
# Compile time and step time of the paper U-Net's RealUID cycle (issue 16), on one GPU machine, in one call:
#   1. every VARIANT in its own process at once, inductor's cache cold: they compile side by side on the host's
#      cores and then take turns on the GPU for the timing (tools/bench_step.py --share-gpu);
#   2. the WARM variants again, one after another, each in a fresh process: the inductor cache and the decoded
#      CIFAR-10 (CIFAR10Shards.cache_dir) now warm, the time from process start to the first compiled step, and
#      the teacher step at batch 128 and 256.
# A variant is NAME=BINDING[;BINDING...] (gin bindings on top of bf16 + whole-network compile), e.g.
#   base=    graphs="TrainingLoop.compile_mode = 'reduce-overhead'"    nhwc="TrainingLoop.channels_last = True"
# Run from the repository root with realuid importable and REALUID_CIFAR10 pointing at the CIFAR-10 shards:
#   WARM="graphs" bash tools/gpu_compile_study.sh OUT_DIR VARIANT [VARIANT ...]
set -uo pipefail
out=${1:?usage: gpu_compile_study.sh OUT_DIR VARIANT [VARIANT ...]}; shift
(($#)) || { echo "gpu_compile_study.sh: give at least one VARIANT (NAME=BINDINGS)" >&2; exit 2; }
mkdir -p "$out"
share=$(mktemp -d)
common=(--precision bf16 --compile on --warmup 2 --repeats 6 --profile 25
        -b "CheckpointTeacher.allow_random_init = True" -b "TrainingLoop.device = 'cuda'"
        -b "CIFAR10Shards.cache_dir = '/tmp/realuid_cifar_cache'")

binds_of() {   # "a;b" -> -b a -b b
  local IFS=';' b; for b in $1; do [[ -n $b ]] && printf '%s\0' -b "$b"; done
}

declare -A bindings
for v in "$@"; do
  name=${v%%=*}; bindings[$name]=${v#*=}
  mapfile -d '' extra < <(binds_of "${v#*=}")
  # a process that fails still counts as ready, so the others do not wait for it
  ( python3 tools/bench_step.py "${common[@]}" "${extra[@]}" --share-gpu "$share:$#" --share-wait 480 \
      --out "$out/bench_step_${name}_cold.json" > "$out/log_${name}_cold.txt" 2>&1 \
    || { echo "variant $name failed (exit $?)" >> "$out/log_${name}_cold.txt"; touch "$share/ready-failed-$name"; } ) &
done
wait
for name in ${WARM:-}; do
  mapfile -d '' extra < <(binds_of "${bindings[$name]:-}")
  python3 tools/bench_step.py "${common[@]}" "${extra[@]}" --teacher-batch 128 --teacher-batch 256 \
    --out "$out/bench_step_${name}_warm.json" \
    > "$out/log_${name}_warm.txt" 2>&1 || echo "variant $name (warm) failed" >> "$out/log_${name}_warm.txt"
done
for f in "$out"/log_*.txt; do echo "== $f"; tail -n 45 "$f"; done
