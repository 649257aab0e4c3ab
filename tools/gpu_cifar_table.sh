#!/usr/bin/env bash
# One GPU call of the CIFAR-10 table (tools/cifar_table.py): the teacher and the FD classifier when
# they are missing, then cells until a deadline, so that a call limit (600 s) never kills a cell.
# What must outlive the call (teacher export, classifier, results, kept first-stage generators) is
# copied to OUT, every file under 16 MiB; carry them into the next allotment with --carried.
#
#     bash tools/gpu_cifar_table.sh --data DIR --out DIR [--work DIR] [--carried DIR] [--deadline S] [CELL...]
#     bash tools/gpu_cifar_table.sh --smoke --out /tmp/t        # the script's logic on CPU, seconds per phase
#
#   --data DIR      CIFAR-10 shard folder (exported as REALUID_CIFAR10)
#   --out DIR       what comes back: cifar_table.json, cifar_table.png, table.txt, log.txt, and, when new
#                   or updated, teacher_export/, fd_classifier.pt, generators/ (best first stage only)
#   --work DIR      run folders (runs/cifar_table; kept between calls of one warm machine)
#   --carried DIR   an earlier call's OUT (teacher_export/, fd_classifier.pt, cifar_table.json,
#                   generators/): copied into WORK where WORK lacks them
#   --deadline S    seconds after the script's start by which the last cell must end (540)
#   CELL...         cells in order (default: the whole table, teacher cells first); cells already
#                   in the results are skipped
#
# Environment: SECONDS_PER_RUN (150), SEEDS ("0 1"), SAMPLES (10000), TEACHER_SECONDS (420),
# INCEPTION (an Inception-v3 weights file: FID too), EXTRA (more options of `cifar_table.py cell`, e.g.
# "--steps 400 --compile-mode reduce-overhead --jobs 4": a step budget, CUDA graphs, four runs at once).
# realuid (with gin-config, webdataset, typer; matplotlib for the figure, torch-fidelity for FID) must
# be importable by $PYTHON (python3): install it or set PYTHONPATH on the command line; the script
# installs nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
SMOKE=0; DATA=""; OUT=""; WORK=""; CARRIED=""; DEADLINE=540; CELLS=()
usage() { sed -n '7,19p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case $1 in
    --smoke) SMOKE=1; shift ;;
    --data|--out|--work|--carried|--deadline)
      [ $# -ge 2 ] || { echo "error: $1 needs a value" >&2; usage >&2; exit 2; }
      case $1 in --data) DATA=$2 ;; --out) OUT=$2 ;; --work) WORK=$2 ;; --carried) CARRIED=$2 ;;
                 --deadline) DEADLINE=$2 ;; esac
      shift 2 ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "error: unknown option $1" >&2; usage >&2; exit 2 ;;
    *) CELLS+=("$1"); shift ;;
  esac
done
[ -n "$OUT" ] || { echo "error: --out DIR is required (where the results come back)" >&2; usage >&2; exit 2; }
case $DEADLINE in ''|*[!0-9]*) echo "error: --deadline $DEADLINE is not a whole number of seconds" >&2; exit 2 ;; esac
if [ -n "$DATA" ]; then
  [ -d "$DATA" ] || { echo "error: --data $DATA is not a folder (give the CIFAR-10 shard folder)" >&2; exit 2; }
  export REALUID_CIFAR10=$DATA
fi
if [ -n "$CARRIED" ] && [ ! -d "$CARRIED" ]; then
  echo "error: --carried $CARRIED is not a folder (give an earlier call's OUT)" >&2; exit 2
fi
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
if ! $PY -c "import sys; del sys.path[0]; import realuid, gin, webdataset, typer" 2>/dev/null; then
  echo "error: $PY cannot import realuid, gin, webdataset and typer" >&2
  echo "  install the package (pip install -e '.[images]') or put them on PYTHONPATH" >&2
  exit 2
fi

SMOKE_FLAG=()
if [ "$SMOKE" = 1 ]; then
  WORK=${WORK:-/tmp/gpu_cifar_table_smoke}; SMOKE_FLAG=(--smoke)
  [ ${#CELLS[@]} -gt 0 ] || CELLS=(teacher-nfe1 uid)
  SEEDS=${SEEDS:-"0"}
else
  WORK=${WORK:-runs/cifar_table}
  [ ${#CELLS[@]} -gt 0 ] || CELLS=(teacher-nfe1 teacher-nfe2 teacher-nfe10 teacher-nfe100 uid realuid-0.92-0.94
                                   realuid-0.94-0.96 realuid-0.96-0.94 realuid-0.94-0.94 uid-gan realuid-ft uid-ft)
  SEEDS=${SEEDS:-"0 1"}
fi
SECONDS_PER_RUN=${SECONDS_PER_RUN:-150}; SAMPLES=${SAMPLES:-10000}; TEACHER_SECONDS=${TEACHER_SECONDS:-420}
mkdir -p "$WORK" "$OUT"
LOG="$OUT/log.txt"; : > "$LOG"
RESULTS="$WORK/cifar_table.json"
COMMON=(--work "$WORK" --results "$RESULTS" "${SMOKE_FLAG[@]}")

# what an earlier call left: WORK's own copy wins (the same warm machine), then --carried, then the repository's
if [ -n "$CARRIED" ]; then
  for item in teacher_export fd_classifier.pt cifar_table.json generators; do
    if [ -e "$CARRIED/$item" ] && [ ! -e "$WORK/$item" ]; then cp -r "$CARRIED/$item" "$WORK/$item"; fi
  done
fi
# the teacher and FD classifier kept in the repository (trained on an H200, 2026-12-02), where neither WORK nor
# --carried has them: every allotment's cells use the same teacher
KEPT=docs/results/cifar_table_kept
if [ "$SMOKE" = 0 ]; then
  for item in teacher_export fd_classifier.pt fd_classifier.toml; do
    if [ -e "$KEPT/$item" ] && [ ! -e "$WORK/$item" ]; then cp -r "$KEPT/$item" "$WORK/$item"; fi
  done
fi
if [ ! -e "$RESULTS" ] && [ "$SMOKE" = 0 ] && [ -f docs/results/cifar_table.json ]; then
  cp docs/results/cifar_table.json "$RESULTS"
fi
TEACHER_SHA_BEFORE=$(sha256sum "$WORK/teacher_export/model.safetensors" 2>/dev/null | cut -c1-64)

$PY -c "import matplotlib" 2>/dev/null || echo "note: no matplotlib: no figure (the curves are in the JSON)" | tee -a "$LOG"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')" 2>&1 | tee -a "$LOG"

# 1. teacher and FD classifier (only when missing)
if [ ! -f "$WORK/teacher_export/config.json" ] || [ ! -f "$WORK/fd_classifier.pt" ]; then
  echo "=== [$(( $(date +%s) - T0 )) s] teacher (${TEACHER_SECONDS} s) and FD classifier" | tee -a "$LOG"
  $PY tools/cifar_table.py teacher --seconds "$TEACHER_SECONDS" "${COMMON[@]}" 2>&1 | tee -a "$LOG"
fi

# 2. cells until the deadline (the tool stops before a cell it expects to end past it)
if [ -f "$WORK/teacher_export/config.json" ]; then
  LEFT=$(( DEADLINE - ($(date +%s) - T0) ))
  SEED_ARGS=(); for s in $SEEDS; do SEED_ARGS+=(--seed "$s"); done
  INCEPTION_ARGS=(); [ -n "${INCEPTION:-}" ] && INCEPTION_ARGS=(--inception-weights "$INCEPTION")
  echo "=== [$(( $(date +%s) - T0 )) s] cells ${CELLS[*]}, seeds $SEEDS, $LEFT s left" | tee -a "$LOG"
  if [ "$LEFT" -gt 0 ]; then
    # shellcheck disable=SC2086
    $PY tools/cifar_table.py cell "${CELLS[@]}" "${SEED_ARGS[@]}" --seconds "$SECONDS_PER_RUN" --samples "$SAMPLES" \
      --deadline "$LEFT" "${INCEPTION_ARGS[@]}" "${COMMON[@]}" ${EXTRA:-} 2>&1 | tee -a "$LOG"
  fi
fi

# 3. what comes back (each file under 16 MiB: the bf16 exports and generators of a 6.5M U-Net are 13 MB)
if [ -f "$RESULTS" ]; then
  cp "$RESULTS" "$OUT/cifar_table.json"
  $PY tools/cifar_table.py table --results "$OUT/cifar_table.json" --figure "$OUT/cifar_table.png" > "$OUT/table.txt" 2>&1
  $PY tools/cifar_table.py table --results "$OUT/cifar_table.json" --figure "$OUT/cifar_table.png" --markdown \
    >> "$OUT/table.txt" 2>&1
  cat "$OUT/table.txt" | tee -a "$LOG"
fi
TEACHER_SHA=$(sha256sum "$WORK/teacher_export/model.safetensors" 2>/dev/null | cut -c1-64)
if [ -n "$TEACHER_SHA" ] && { [ "$TEACHER_SHA" != "$TEACHER_SHA_BEFORE" ] || [ -z "$CARRIED" ]; }; then
  cp -r "$WORK/teacher_export" "$OUT/teacher_export"
fi
[ -f "$WORK/fd_classifier.pt" ] && cp "$WORK/fd_classifier.pt" "$WORK/fd_classifier.toml" "$OUT/" 2>/dev/null
BEST=$([ -f "$RESULTS" ] && $PY tools/cifar_table.py first-stage --results "$RESULTS")
if [ -n "$BEST" ] && ls -d "$WORK/generators/$BEST"-s* >/dev/null 2>&1; then
  mkdir -p "$OUT/generators"
  for g in "$WORK/generators/$BEST"-s*; do cp -r "$g" "$OUT/generators/"; done
fi
mkdir -p "$OUT/grids"; cp "$WORK"/eval/*.png "$OUT/grids/" 2>/dev/null
echo "=== done in $(( $(date +%s) - T0 )) s; files in $OUT:" | tee -a "$LOG"
find "$OUT" -type f -printf '%8k KiB  %p\n' | sort -k3 | tee -a "$LOG"
