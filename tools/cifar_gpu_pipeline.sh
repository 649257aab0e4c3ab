#!/usr/bin/env bash
# The CIFAR-10 image pipeline on one GPU in about 9 minutes: FD classifier, an FM teacher,
# its UID and RealUID students, the classifier FD of the teacher at NFE 1, 2, 10, 100 and of
# each student at NFE 1, images/s of every step kind and peak memory. Everything small goes
# to OUT: summary.json (numbers, exact commands, manifests' text), a few PNG grids and
# log.txt. Run folders and checkpoints stay in WORK (runs/ is git-ignored); manifests of the
# trained models are written to REGISTRY.
#
#     bash tools/cifar_gpu_pipeline.sh [--data DIR] [--out DIR] [--work DIR] [--registry DIR]
#     bash tools/cifar_gpu_pipeline.sh --smoke        # the script's logic on CPU, seconds per phase
#
#   --data DIR       CIFAR-10 shard folder (exported as REALUID_CIFAR10; default: realuid's own,
#                    i.e. $REALUID_CIFAR10 or the shared data folder)
#   --out DIR        small results       (runs/cifar_gpu_pipeline_out; smoke: /tmp/cifar_gpu_pipeline_smoke_out)
#   --work DIR       run folders, wiped at the start (runs/cifar_gpu_pipeline; smoke: /tmp/cifar_gpu_pipeline_smoke)
#   --registry DIR   manifests written   (registry; smoke: WORK/registry_out)
#
# realuid (with gin-config, webdataset, braceexpand and torch-fidelity) must be importable by
# $PYTHON (default python3): install the package (pip install -e '.[images]') or set PYTHONPATH
# on the command line; the script installs nothing.
#
# Every duration and size is a variable (environment overrides):
#   CLF_EPOCHS        FD classifier epochs                               (8)
#   TEACHER_SECONDS   FM teacher training time, seconds                  (140)
#   UID_SECONDS       UID distillation time, seconds                     (75)
#   REALUID_SECONDS   RealUID distillation time, seconds                 (75)
#   FD_SAMPLES        samples per classifier-FD evaluation               (5000)
#   TEACHER_NFES      teacher NFEs to evaluate (Heun; NFE 1 = one Euler step)  ("1 2 10 100")
#   BATCH             batch of teacher and students                      (256)
#   TEACHER_LR, DISTILL_LR, DISTILL_WARMUP, ALPHA, BETA, K              (5e-4, 1e-4, 50, 0.92, 0.94, 5)
#   UNET              U-Net bindings of teacher and students (a 6.5M-parameter variant of the
#                     paper's 35.7M U-Net: 64 channels, multipliers 1,2,2, 2 blocks, attention at 16)
#   BENCH_REPEATS     timed repeats per step kind in tools/bench_step.py  (5; 0 skips it)
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
SMOKE=0; DATA=""; OUT=""; WORK=""; REGISTRY=""
usage() { sed -n '9,16p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case $1 in
    --smoke) SMOKE=1; shift ;;
    --data|--out|--work|--registry)
      [ $# -ge 2 ] || { echo "error: $1 needs a folder" >&2; usage >&2; exit 2; }
      case $1 in --data) DATA=$2 ;; --out) OUT=$2 ;; --work) WORK=$2 ;; --registry) REGISTRY=$2 ;; esac
      shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
T0=$(date +%s)

if [ -n "$DATA" ]; then export REALUID_CIFAR10=$DATA; fi
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
# (sys.path[0] is the current folder under -c; tools/*.py do not get it, so it must not count)
if ! $PY -c "import sys; del sys.path[0]; import realuid, gin, webdataset, torch_fidelity" 2>/dev/null; then
  echo "error: $PY cannot import realuid, gin, webdataset and torch_fidelity" >&2
  echo "  install the package (pip install -e '.[images]') or put them on PYTHONPATH" >&2
  exit 2
fi

if [ "$SMOKE" = 1 ]; then
  OUT=${OUT:-/tmp/cifar_gpu_pipeline_smoke_out}
  WORK=${WORK:-/tmp/cifar_gpu_pipeline_smoke}
  CLF_EPOCHS=${CLF_EPOCHS:-1}; TEACHER_SECONDS=${TEACHER_SECONDS:-8}; UID_SECONDS=${UID_SECONDS:-8}
  REALUID_SECONDS=${REALUID_SECONDS:-8}; FD_SAMPLES=${FD_SAMPLES:-32}; TEACHER_NFES=${TEACHER_NFES:-"1 2 4"}
  BATCH=${BATCH:-8}; BENCH_REPEATS=${BENCH_REPEATS:-1}
  DEVICE=cpu; PRECISION=fp32; MAX_STEPS=3; EVAL_EVERY=2; EVAL_SAMPLES=8; CKPT_EVERY=2; EVAL_BATCH=16
  UNET=${UNET:-""}
  SMOKE_FLAG="--smoke"; SMOKE_BIND=("-b" "include '$REPO/gin/smoke/smoke.gin'")
  CLF_ARGS=(--limit 300 --widths 8,16 --num-workers 1 --batch-size 64)
  REF=(--reference-limit 256); REF_BIND=("-b" "ClassifierFD.reference_limit = 256" "-b" "ClassifierFD.pr_reference_size = 256")
else
  OUT=${OUT:-runs/cifar_gpu_pipeline_out}
  WORK=${WORK:-runs/cifar_gpu_pipeline}
  CLF_EPOCHS=${CLF_EPOCHS:-8}; TEACHER_SECONDS=${TEACHER_SECONDS:-140}; UID_SECONDS=${UID_SECONDS:-75}
  REALUID_SECONDS=${REALUID_SECONDS:-75}; FD_SAMPLES=${FD_SAMPLES:-5000}; TEACHER_NFES=${TEACHER_NFES:-"1 2 10 100"}
  BATCH=${BATCH:-256}; BENCH_REPEATS=${BENCH_REPEATS:-5}
  DEVICE=cuda; PRECISION=bf16; MAX_STEPS=1000000; EVAL_EVERY=2000; EVAL_SAMPLES=1000; CKPT_EVERY=2000; EVAL_BATCH=1000
  UNET=${UNET:-"UNet.model_channels = 64;UNet.channel_mult = (1, 2, 2);UNet.num_res_blocks = 2;UNet.dropout = 0.0"}
  SMOKE_FLAG=""; SMOKE_BIND=()
  CLF_ARGS=(--num-workers 8)
  REF=(); REF_BIND=()
fi
TEACHER_LR=${TEACHER_LR:-5e-4}; DISTILL_LR=${DISTILL_LR:-1e-4}; DISTILL_WARMUP=${DISTILL_WARMUP:-50}
ALPHA=${ALPHA:-0.92}; BETA=${BETA:-0.94}; K=${K:-5}
DISTILL_EVAL_EVERY=$([ "$SMOKE" = 1 ] && echo 2 || echo 200)
REGISTRY=${REGISTRY:-$([ "$SMOKE" = 1 ] && echo "$WORK/registry_out" || echo registry)}

rm -rf "$WORK"; mkdir -p "$WORK/eval" "$WORK/grids" "$WORK/registry" "$OUT"
LOG="$OUT/log.txt"; : > "$LOG"
CLF="$WORK/fd_classifier.pt"
CACHE="$WORK/cache"

UNET_BINDS=()
IFS=';' read -ra _unet <<< "$UNET"
for b in "${_unet[@]}"; do [ -n "$b" ] && UNET_BINDS+=("-b" "$b"); done

cat > "$WORK/settings.json" <<EOF
{"smoke": $SMOKE, "clf_epochs": $CLF_EPOCHS, "teacher_seconds": $TEACHER_SECONDS, "uid_seconds": $UID_SECONDS,
 "realuid_seconds": $REALUID_SECONDS, "fd_samples": $FD_SAMPLES, "teacher_nfes": "$TEACHER_NFES", "batch": $BATCH,
 "teacher_lr": $TEACHER_LR, "distill_lr": $DISTILL_LR, "distill_warmup": $DISTILL_WARMUP, "alpha": $ALPHA,
 "beta": $BETA, "k": $K, "unet": "$UNET", "precision": "$PRECISION", "device": "$DEVICE"}
EOF

# phase NAME CMD...: run, time, log the exact command and its exit code to phases.jsonl
phase() {
  local name=$1; shift
  local start end rc cmd
  cmd=$(printf '%q ' "$@")
  echo "=== [$(( $(date +%s) - T0 )) s] $name: $cmd" | tee -a "$LOG"
  start=$(date +%s.%N)
  "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  end=$(date +%s.%N)
  $PY - "$name" "$cmd" "$start" "$end" "$rc" >> "$WORK/phases.jsonl" <<'PYEOF'
import json, sys
name, cmd, start, end, rc = sys.argv[1:]
print(json.dumps({"phase": name, "command": cmd.strip(), "seconds": round(float(end) - float(start), 2), "rc": int(rc)}))
PYEOF
  [ "$rc" = 0 ] || echo "!!! phase $name failed with exit code $rc" | tee -a "$LOG"
  return 0
}

$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')" 2>&1 | tee -a "$LOG"

# 1. the FD classifier (its test accuracy goes to its manifest)
phase classifier $PY tools/train_fd_classifier.py --out "$CLF" --manifest "$WORK/registry/fd_classifier.toml" \
  --epochs "$CLF_EPOCHS" --device "$DEVICE" "${CLF_ARGS[@]}"

FD_BINDS=("-b" "ClassifierFD.classifier_path = '$CLF'" "${REF_BIND[@]}")
[ -f "$CLF" ] || FD_BINDS=()
common_binds() {  # trainer gin name: loop settings go to TrainingLoop, the metrics to the trainer
  local tr=$1
  printf '%s\n' -b "CIFAR10Shards.cache_dir = '$CACHE'" -b "CIFAR10Shards.num_workers = 8" \
    -b "TrainingLoop.device = '$DEVICE'" -b "TrainingLoop.precision = '$PRECISION'" \
    -b "TrainingLoop.batch_size = $BATCH" -b "TrainingLoop.steps = $MAX_STEPS" \
    -b "TrainingLoop.eval_samples = $EVAL_SAMPLES" -b "TrainingLoop.checkpoint_every = $CKPT_EVERY"
  if [ -f "$CLF" ]; then printf '%s\n' -b "$tr.metrics = [@ClassifierFD()]"; fi
}
mapfile -t TEACHER_COMMON < <(common_binds MatchingTrainer)
mapfile -t DISTILL_COMMON < <(common_binds DistillationTrainer)

# 2. the flow-matching teacher
phase teacher $PY -m realuid run gin/fm_cifar_teacher.gin $SMOKE_FLAG --out "$WORK/fm_teacher" --no-progress \
  "${UNET_BINDS[@]}" "${TEACHER_COMMON[@]}" "${FD_BINDS[@]}" \
  -b "TrainingLoop.time_limit = $TEACHER_SECONDS" -b "MatchingTrainer.lr = $TEACHER_LR" \
  -b "MatchingTrainer.warmup_steps = 200" -b "MatchingTrainer.ema_decay = 0.999" \
  -b "TrainingLoop.eval_every = $EVAL_EVERY" -b "MatchingTrainer.eval_nfe = 20"

# 3-4. UID and RealUID students (generator from the teacher, fake model from scratch, K fake steps)
distil() {  # name recipe seconds extra-binds...
  local name=$1 recipe=$2 seconds=$3; shift 3
  phase "$name" $PY -m realuid run "$recipe" $SMOKE_FLAG --out "$WORK/$name" --no-progress \
    "${UNET_BINDS[@]}" "${DISTILL_COMMON[@]}" "${FD_BINDS[@]}" \
    -b "CheckpointTeacher.source = '$WORK/fm_teacher'" -b "TrainingLoop.time_limit = $seconds" \
    -b "DistillationTrainer.lr_generator = $DISTILL_LR" -b "DistillationTrainer.lr_fake = $DISTILL_LR" \
    -b "DistillationTrainer.warmup_steps = $DISTILL_WARMUP" -b "DistillationTrainer.fake_steps = $K" \
    -b "TrainingLoop.eval_every = $DISTILL_EVAL_EVERY" "$@"
}
distil uid gin/uid_fm_cifar.gin "$UID_SECONDS"
distil realuid gin/realuid_fm_cifar.gin "$REALUID_SECONDS" -b "RealUID.alpha = $ALPHA" -b "RealUID.beta = $BETA"

# 5. classifier FD (and sampling images/s) of the teacher at each NFE and of the students at NFE 1
evaluate() {  # key source extra-args...
  local key=$1 source=$2; shift 2
  phase "eval_$key" $PY -m realuid eval "$source" --no-fid --fd-classifier "$CLF" --num "$FD_SAMPLES" \
    --batch-size "$EVAL_BATCH" --device "$DEVICE" --precision "$PRECISION" "${REF[@]}" \
    --json "$WORK/eval/$key.json" --grid "$WORK/grids/$key.png" "$@"
}
if [ -f "$CLF" ]; then
  for nfe in $TEACHER_NFES; do evaluate "teacher_nfe$nfe" "$WORK/fm_teacher" --nfe "$nfe" --solver heun; done
  evaluate uid_nfe1 "$WORK/uid"
  evaluate realuid_nfe1 "$WORK/realuid"
fi

# 6. images/s, TFLOP/s, MFU and peak memory of each step kind (teacher, fake, generator, K+1 cycle)
if [ "$BENCH_REPEATS" != 0 ]; then
  phase bench $PY tools/bench_step.py --recipe gin/realuid_fm_cifar.gin --teacher-recipe gin/fm_cifar_teacher.gin \
    --precision "$PRECISION" --compile off --warmup 2 --repeats "$BENCH_REPEATS" --out "$WORK/bench.json" \
    "${SMOKE_BIND[@]}" "${UNET_BINDS[@]}" -b "CheckpointTeacher.source = '$WORK/fm_teacher'" \
    -b "CIFAR10Shards.cache_dir = '$CACHE'" -b "TrainingLoop.batch_size = $BATCH" \
    -b "DistillationTrainer.fake_steps = $K" -b "TrainingLoop.device = '$DEVICE'"
fi

# 7. summary.json, manifests (registry/), PNGs
phase summary $PY tools/cifar_gpu_summary.py --work "$WORK" --out "$OUT" --registry "$REGISTRY"
echo "=== done in $(( $(date +%s) - T0 )) s; files in $OUT:" | tee -a "$LOG"
ls -la "$OUT" | tee -a "$LOG"
