#!/usr/bin/env bash
# three-branch-glas-v10's recipe from a fresh clone: its two base networks, their continuations on the two cross-fit
# halves and on every image, the k-fold that validates the recipe by patient, and the ensemble. Sessions 13-26 ran
# these steps from git-ignored scratch scripts (runs/), which a new machine loses; this is the same sequence in one
# place. Shipping stays a separate, deliberate step: python scripts/ship_model.py OUT/three-branch-glas-v10.safetensors
# --name NAME --sample glands --card-json scripts/cards/three-branch-glas-v10.json --kfold-json
# RUNS/kfold-v10-recipe.json (it refuses to replace a shipped model).
#
#   bash scripts/glas_recipe_v10.sh ../shared/data/glas [STEP ...]
#
# STEPs (default: all, in this order): sets d5 effl2 d5-halves effl2-halves kfold ensemble
#   sets          runs/data/glas-{xfitA,xfitB,all}: scripts/glas_cross_fit_sets.py (checked against v10's record)
#   d5            glas-depth5: v8's U-Net (depth 5) on glas/train less 16 validation images, 239 epochs
#   effl2         glas-effl2: the EfficientNet-Lite2 trunk (ImageNet start, the [pretrained] extra), 240 epochs
#   d5-halves     glas-d5-{xfitA,xfitB,all}: glas-depth5's resume file continued to epoch 309 on each set, lr 3e-4
#   effl2-halves  glas-effl2-{xfitA,xfitB,all}: glas-effl2's continued to epoch 310
#   kfold         runs/kfold-v10-recipe.json: the cross-fitted k-fold by patient (76 images), per grade
#   ensemble      checkpoints/three-branch-glas-v10.safetensors: the two "all" networks, tuned on cross-fitted maps
#
# Every training step resumes where it stopped (train's resume files in checkpoints/, written every 3 minutes)
# and every step but sets skips itself once its output exists, so the script can be run again after a session ends. The halves and
# "all" runs of one recipe run side by side, 1 thread each. Times on a 2-core CPU with bfloat16 (sessions 19-26):
# d5 48 min, effl2 70 min, each set of continuations 20-40 min, kfold 8 min.
#
# Environment: THREADS (base runs, default 2); AMP (default --amp, the recipe's bfloat16 forward passes: train
# refuses it on a CPU without AVX512-BF16 or AMX; AMP= trains in float32, which is not the recipe and is 2-3x
# slower); DEVICE (default cpu; cuda on a GPU, whose bfloat16 serves --amp) and LOADER_WORKERS (default 0; on a GPU,
# processes that make the batches, e.g. 4). BASE_EPOCHS_D5, BASE_EPOCHS_EFFL2, MORE_EPOCHS (239, 240, 70: change
# them only for a dry run of the plumbing); MAX_MINUTES (default 400: each run's cap on its training time, summed over
# resumes; raise it for float32 or a busy CPU, or a run stops short of its epochs and counts as done); HALF_SETS
# (default "xfitA xfitB all": the sets the continuations train on; the two halves alone give the k-fold, "all" only
# the ensemble); OUT (default checkpoints), RUNS (default runs).
#
# The k-fold and the ensemble leave split_radius and min_mean_foreground (session 31, newer than v10) at their
# defaults, off, as v10's recipe did.
#
# What it makes is a new draw of the recipe (its data, sets, epochs, learning rates and seeds), not the shipped
# networks bit for bit: those came from runs with other thread counts and histories (v8's network from session
# 13's 1-thread base, stopped by its time limit at epoch 239; v10's Lite2 network continued at 2 threads), and the
# thread count and device change the numerics. Sessions 19-26 measured how far a draw moves the k-fold (about 0.03
# on testB's patients' malignant mean).
set -euo pipefail
cd "$(dirname "$0")/.."
GLAS=${1:?usage: bash scripts/glas_recipe_v10.sh GLAS_DIR [STEP ...]}
shift
STEPS=${*:-sets d5 effl2 d5-halves effl2-halves kfold ensemble}
PY=${PY:-.venv/bin/python}
NIT=${NIT:-.venv/bin/napari-instance-tuner}
THREADS=${THREADS:-2}
AMP=${AMP---amp}
BASE_EPOCHS_D5=${BASE_EPOCHS_D5:-239}
BASE_EPOCHS_EFFL2=${BASE_EPOCHS_EFFL2:-240}
MORE_EPOCHS=${MORE_EPOCHS:-70}
MAX_MINUTES=${MAX_MINUTES:-400}
HALF_SETS=${HALF_SETS:-xfitA xfitB all}
OUT=${OUT:-checkpoints}
RUNS=${RUNS:-runs}
mkdir -p "$OUT" "$RUNS/logs"
COMMON=(--depth 5 --centroid-mode inside --stain-jitter 0.5 --stain-strength 0.1 --elastic 0.3 --ema 0.99
        --max-minutes "$MAX_MINUTES" --seed 0 --quiet --workdir "$OUT" --device "${DEVICE:-cpu}"
        --loader-workers "${LOADER_WORKERS:-0}")
[ -n "$AMP" ] && COMMON+=("$AMP")
EFFL2=(--encoder efficientnet_lite2 --lr 3e-4)

say() { echo "[$(date -u +%H:%M:%S)] $*"; }
failed() { say "$1 failed; the end of $2:" >&2; tail -n 5 "$2" >&2; exit 1; }

base() {  # base NAME EPOCHS [ARGS...]: a network on glas/train less its 16 validation images
  local name=$1 epochs=$2; shift 2
  if [ -f "$OUT/$name.safetensors" ]; then say "$name: exists, skipped"; return; fi
  say "$name: training ($epochs epochs, $THREADS threads; log $RUNS/logs/$name.log)"
  "$NIT" train --data "$GLAS/train" --out "$OUT/$name.safetensors" --name "$name" "${COMMON[@]}" \
    --epochs "$epochs" --patience 300 --validate-every 4 --threads "$THREADS" "$@" > "$RUNS/logs/$name.log" 2>&1 \
    || failed "$name" "$RUNS/logs/$name.log"
}

continued() {  # continued BASE PREFIX EPOCHS [ARGS...]: BASE's resume file continued on each cross-fit set
  local from=$1 prefix=$2 epochs=$3; shift 3
  local pids=() names=() set name i
  for set in $HALF_SETS; do
    name=$prefix-$set
    if [ -f "$OUT/$name.safetensors" ]; then say "$name: exists, skipped"; continue; fi
    [ -f "$OUT/$name.resume.pt" ] || cp "$OUT/$from.resume.pt" "$OUT/$name.resume.pt"
    say "$name: continuing $from to epoch $epochs on $RUNS/data/glas-$set (1 thread; log $RUNS/logs/$name.log)"
    "$NIT" train --data "$RUNS/data/glas-$set/train" --out "$OUT/$name.safetensors" --name "$name" "${COMMON[@]}" \
      --epochs "$epochs" --val-fraction 0 --threads 1 --lr 3e-4 "$@" > "$RUNS/logs/$name.log" 2>&1 &
    pids+=($!) names+=("$name")
  done
  for i in "${!pids[@]}"; do wait "${pids[$i]}" || failed "${names[$i]}" "$RUNS/logs/${names[$i]}.log"; done
}

halves() {  # the cross-fit arguments of both recipes
  echo --cross-fit "$OUT/glas-d5-xfitA.safetensors" "$OUT/glas-d5-xfitB.safetensors" \
       --also-cross-fit "$OUT/glas-effl2-xfitA.safetensors" "$OUT/glas-effl2-xfitB.safetensors"
}

for step in $STEPS; do
  case $step in
    sets) "$PY" scripts/glas_cross_fit_sets.py "$GLAS" --out "$RUNS/data" --check three-branch-glas-v10 ;;
    d5) base glas-depth5 "$BASE_EPOCHS_D5" ;;
    effl2) base glas-effl2 "$BASE_EPOCHS_EFFL2" "${EFFL2[@]}" ;;
    d5-halves) continued glas-depth5 glas-d5 $((BASE_EPOCHS_D5 + MORE_EPOCHS)) ;;
    effl2-halves) continued glas-effl2 glas-effl2 $((BASE_EPOCHS_EFFL2 + MORE_EPOCHS)) --encoder efficientnet_lite2 ;;
    kfold)
      if [ -f "$RUNS/kfold-v10-recipe.json" ]; then say "$RUNS/kfold-v10-recipe.json: exists, skipped"; continue; fi
      say "k-fold by patient of the cross-fitted recipe -> $RUNS/kfold-v10-recipe.json"
      # shellcheck disable=SC2046
      "$PY" benchmarks/glas_lopo_tuning.py --model "$OUT/glas-depth5.safetensors" --data "$GLAS/train" \
        --extra-data "$GLAS/testA" --folds 4 --objectives all --skip-whole --exclude split_radius,min_mean_foreground \
        --cache "$OUT/maps-cache" $(halves) --json "$RUNS/kfold-v10-recipe.json" ;;
    ensemble)
      if [ -f "$OUT/three-branch-glas-v10.safetensors" ]; then say "the ensemble exists, skipped"; continue; fi
      say "the ensemble of the two networks trained on every image -> $OUT/three-branch-glas-v10.safetensors"
      # shellcheck disable=SC2046
      "$PY" scripts/make_ensemble.py "$OUT/glas-d5-all.safetensors" "$OUT/glas-effl2-all.safetensors" \
        --data "$GLAS/train" --extra-data "$GLAS/testA" $(halves) --from-defaults --exclude split_radius,min_mean_foreground \
        --out "$OUT/three-branch-glas-v10.safetensors" --name three-branch-glas-v10 ;;
    *) echo "unknown step: $step (sets d5 effl2 d5-halves effl2-halves kfold ensemble)" >&2; exit 2 ;;
  esac
done
say "done: $STEPS"
