#!/usr/bin/env bash
# One short GPU session, as one script (the device machine is lent for minutes at a time):
#   1. the CUDA tests (tests/test_cuda.py),
#   2. GPU timings of the paper configuration at 64×64 (benchmarks/train_speed.py),
#   3. the 64×64 models trained side by side for MINUTES each, then shipped (weights, prior) and
#      evaluated on fresh test scenes; each one comes back as OUT/<name>.tar,
#   4. with SNAPSHOT_EVERY=N, the learning curve of each run (OUT/curves.tar).
# Runs from the source tree with the machine's own PyTorch (no install):
#   OUT=/tmp/gpu-out MINUTES=5 bash benchmarks/gpu_session.sh
set -u
OUT=${OUT:?set OUT to a folder for the results}
MINUTES=${MINUTES:-5}
WORK=${WORK:-/tmp/econ-gpu}
DEVICE=${DEVICE:-cuda}   # cpu: a dry run of this script (with small N_TRAIN, N_TEST, MINUTES)
N_TRAIN=${N_TRAIN:-20100}
N_TEST=${N_TEST:-300}    # scenes evaluated here; the full 1000 are evaluated again on the CPU
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PY:-python3}
econ() { "$PY" -m econ_scenes "$@"; }
mkdir -p "$OUT" "$WORK/data" "$WORK/runs" "$WORK/pretrained"
stamp() { echo "== $(date +%T) $*"; }

# name | data | test | options. The competition of the quick preset (τ annealing, band price,
# usage balance), read from it; λ is each preset's own.
COMPETITION=$("$PY" -c "from econ_scenes.config import preset
m = preset('quick').model
print(' '.join(f'--set model.competition_{k}={getattr(m, \"competition_\" + k)}' for k in (
    'temperature_start', 'anneal_iterations', 'scope_cost', 'min_region', 'max_region',
    'balance', 'balance_steps')))")
SNAPSHOT_EVERY=${SNAPSHOT_EVERY:-0}
COMMON="--set train.checkpoint_every=1000 --set train.image_every=0 --no-progress
  --set train.snapshot_every=$SNAPSHOT_EVERY"
declare -A DATA TEST OPTIONS
DATA[unique64]=u64; TEST[unique64]=test-unique
OPTIONS[unique64]="--preset paper-unique --set model.latent_dim=3 --set model.beta=1.0
  --set model.gamma=1.0 --set train.lr=1e-3 $COMPETITION"
DATA[unique64-s1]=u64; TEST[unique64-s1]=test-unique
OPTIONS[unique64-s1]="${OPTIONS[unique64]} --seed 1"
DATA[unique64-paper]=u64; TEST[unique64-paper]=test-unique
OPTIONS[unique64-paper]="--preset paper-unique $COMPETITION"
DATA[random64]=r64; TEST[random64]=test-random
OPTIONS[random64]="--preset paper-random --set train.lr=1e-3 $COMPETITION"
DATA[single64]=u64; TEST[single64]=test-unique
OPTIONS[single64]="--preset paper-unique --gt-masks --set model.latent_dim=8 --set model.beta=1.0
  --set model.gamma=1.0 --set train.lr=1e-3"
# single-64, trained on from the shipped weights (fresh Adam, the plateau schedule restarts)
DATA[single64-more]=u64; TEST[single64-more]=test-unique
OPTIONS[single64-more]="--config pretrained/single-64/config.json --init pretrained/single-64
  --set train.lr=4e-4"
NAMES=${NAMES:-unique64 unique64-paper random64 single64}
for name in $NAMES; do
  [ -n "${DATA[$name]:-}" ] || { echo "unknown run name $name (known: ${!DATA[*]})"; exit 2; }
done

stamp machine
nvidia-smi -L || true
GPU=$("$PY" -c "import platform, torch
print(torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or 'CPU')")
TORCH=$("$PY" -c "import torch; print(torch.__version__)")

stamp data
D=$WORK/data
econ data make --preset unique --n "$N_TRAIN" --size 64 --seed 1 --out "$D/u64.npz" &
econ data make --preset random --n "$N_TRAIN" --size 64 --seed 11 --out "$D/r64.npz" &
econ data make --preset unique --n 1000 --size 64 --seed 777 --out "$D/test-unique.npz" &
econ data make --preset random --n 1000 --size 64 --seed 779 --out "$D/test-random.npz" &
econ data make --preset ood --n 500 --size 64 --seed 778 --out "$D/test-ood.npz" &

stamp cuda tests
timeout 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py > "$OUT/cuda_tests.txt" 2>&1
tail -n 20 "$OUT/cuda_tests.txt"
wait

stamp timings
[ "${TIMINGS:-1}" = 1 ] && timeout 150 "$PY" benchmarks/train_speed.py --preset paper-unique --size 64 --batch 32 \
  --iterations 10 --warmup 3 --device "$DEVICE" --out "$OUT/train_speed_gpu.md" 2>&1 | tail -n 30

stamp "training ($MINUTES min each, side by side): $NAMES"
for name in $NAMES; do
  # shellcheck disable=SC2086
  econ train --data "$D/${DATA[$name]}.npz" --out "$WORK/runs/$name" --device "$DEVICE" \
    --max-minutes "$MINUTES" ${OPTIONS[$name]} $COMMON > "$WORK/$name.log" 2>&1 &
done
wait
for name in $NAMES; do tail -n 3 "$WORK/$name.log"; done

stamp "ship and evaluate"
ship() {
  local name=$1 run=$WORK/runs/$1 target=$WORK/pretrained/$1
  "$PY" benchmarks/export_pretrained.py "$run" "$name" --root "$WORK/pretrained" \
    --hardware "$GPU (one of the runs sharing it), torch $TORCH" || return
  "$PY" -c "import sys; from econ_scenes.data import load_scenes; from econ_scenes.scene import SceneModel
SceneModel.load(sys.argv[1], sys.argv[3]).fit_prior(load_scenes(sys.argv[2]).images[:2000])" \
    "$target" "$D/${DATA[$name]}.npz" "$DEVICE"
  cp -r "$run/tb" "$run/run.json" "$target/" 2>/dev/null
  tar -cf "$OUT/$name.tar" -C "$WORK/pretrained" "$name"  # the weights come back even if...
  timeout 100 "$PY" -m econ_scenes evaluate "$target" --data "$D/${TEST[$name]}.npz" \
    --n "$N_TEST" --out "$target" --device "$DEVICE" --no-progress > "$WORK/$name.eval.log" 2>&1
  tail -n 12 "$WORK/$name.eval.log"
  tar -cf "$OUT/$name.tar" -C "$WORK/pretrained" "$name"  # ...the evaluation does not finish
}
curve() {
  local name=$1
  ls "$WORK/runs/$name/snapshots/"*.safetensors > /dev/null 2>&1 || return 0
  local preset=unique
  [ "${DATA[$name]}" = r64 ] && preset=random
  timeout 120 "$PY" benchmarks/learning_curve.py "$WORK/runs/$name" --out "$WORK/curves/$name" \
    --n 200 --preset "$preset" --device "$DEVICE" --threads 2 > "$WORK/$name.curve.log" 2>&1
}
mkdir -p "$WORK/curves"
for name in $NAMES; do ship "$name" > "$WORK/$name.ship.log" 2>&1 & done
for name in $NAMES; do curve "$name" & done
wait
tar -cf "$OUT/curves.tar" -C "$WORK" curves
for name in $NAMES; do echo "--- $name"; cat "$WORK/$name.ship.log"; done
cat "$WORK"/*.log > "$OUT/logs.txt"
stamp done
