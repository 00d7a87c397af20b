#!/usr/bin/env bash
# configs/msrc.py:full on one GPU (docs/groupwise.md, "At the paper's sizes"): the group-wise model
# (K = 4, T = 3) and the authors' network (K = 3) against the matched single-image baseline
# (configs/sweeps/msrc_full.py), every seed of each in its own process at once, through the
# CAMs, the pseudo labels and their evaluation. DeepLab is left out: its 3000 steps of 10 crops
# do not fit a borrowed machine's minutes. Needs neither TensorFlow nor clu (data.loader=numpy).
# Run from anywhere.
#
#   bash benchmarks/msrc_device.sh            # on the GPU machine, carrying .device_msrc, .wheels
#   bash benchmarks/msrc_device.sh --quick    # smoke test on any machine (a tiny random MSRC)
#
# .device_msrc comes from `python -m benchmarks.msrc_device pack` (MSRC-v2 as JPEGs and the
# VGG16 in float16, 56 MiB). Environment: SEEDS (default 0,1,2; --quick: 0), ONLY (the sweep's
# variants, default single_image_K1,group_K4_T3,release_K3_T3), RUN_S (each
# run's time limit, default 480 s), GWSSS_MSRC_PACK (default .device_msrc), GWSSS_SET (more
# `key=value,...` overrides for every run), OUT (where the table, the per-seed CSV, the logs,
# graph_probe.txt and gpu_util.csv go; default runs/msrc_device).
set -u
cd "$(dirname "$0")/.."
. benchmarks/device_env.sh || exit 2
QUICK=0
[ "${1:-}" = --quick ] && QUICK=1
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gwsss_msrc_device.XXXXXX")
RESULTS=${OUT:-runs/msrc_device}
RUN_S=${RUN_S:-480}
mkdir -p "$RESULTS" "$WORK/logs"

if [ $QUICK = 1 ]; then
  SEEDS=${SEEDS:-0}
  PACK=$WORK/pack
  "$PY" -m benchmarks.msrc_device fixture --out="$WORK/fixture" || exit 2
  "$PY" -m benchmarks.msrc_device pack --msrc="$WORK/fixture" --out="$PACK" || exit 2
  WEIGHTS=
  # Tiny network and crops, two epochs; the sweep's variants keep their K, T and batches.
  EXTRA=,data.crop_size=32,data.resize=40,model.width=0.0625,model.node_dim=16,model.gru_kernel=1,train.num_epochs=2,train.log_every_steps=10
  export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
else
  SEEDS=${SEEDS:-0,1,2}
  PACK=${GWSSS_MSRC_PACK:-.device_msrc}
  WEIGHTS=$PACK/vgg16_fp16
  if [ ! -f "$WEIGHTS/pretrained.json" ]; then
    echo "error: $WEIGHTS holds no converted weights: run 'python -m benchmarks.msrc_device" \
         "pack --msrc=... --weights=... --out=$PACK' and carry $PACK" >&2
    exit 2
  fi
  EXTRA=
fi
"$PY" -m benchmarks.msrc_device unpack --src="$PACK" --out="$WORK/msrc_v2" || exit 2

SWEEP=(-m gwsss_jax.sweep --config=configs/msrc.py:full --sweep=configs/sweeps/msrc_full.py
       --workdir="$WORK/runs" --seeds="$SEEDS" --only="${ONLY:-single_image_K1,group_K4_T3,release_K3_T3}"
       --stages=train_cls,export_cams,pseudo_labels,eval_cams
       --set="data.loader=numpy,data.num_threads=2,data.root=$WORK/msrc_v2,model.pretrained=$WEIGHTS$EXTRA${GWSSS_SET:+,$GWSSS_SET}")
"$PY" "${SWEEP[@]}" --print_commands > "$WORK/commands.txt" || exit 2
n=$(wc -l < "$WORK/commands.txt")
# All runs share the device: each takes its part of the memory instead of JAX's default 75%.
export XLA_PYTHON_CLIENT_MEM_FRACTION=$(awk -v n="$n" 'BEGIN { printf "%.3f", 0.9 / n }')
echo "# $n runs at once (seeds $SEEDS), each within ${RUN_S}s; logs in $WORK/logs"
# How busy the GPU is while the runs share it: runs starved by their hosts leave it idle.
SMI_PID=
if command -v nvidia-smi > /dev/null 2>&1; then
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 5 \
    > "$RESULTS/gpu_util.csv" 2>&1 &
  SMI_PID=$!
fi
pids=()
i=0
while read -r cmd; do
  ( start=$(date +%s)
    timeout "$RUN_S" bash -c "$cmd" > "$WORK/logs/run$i.log" 2>&1
    rc=$?
    echo "run$i rc=$rc $(( $(date +%s) - start ))s $cmd" >> "$WORK/timing.txt" ) &
  pids+=($!)
  i=$((i + 1))
done < "$WORK/commands.txt"
wait "${pids[@]}"
if [ -n "$SMI_PID" ]; then
  kill "$SMI_PID" 2> /dev/null
  wait "$SMI_PID" 2> /dev/null
  awk -F', *' 'NR > 1 && $2 ~ /%/ { sub(/ *%.*/, "", $2); s += $2; n++ }
    END { if (n) printf "# GPU busy %.0f%% of the time on average (%d samples, %s)\n",
                        s / n, n, "gpu_util.csv" }' "$RESULTS/gpu_util.csv"
fi
sort "$WORK/timing.txt" | tee "$RESULTS/timing.txt"
"$PY" "${SWEEP[@]}" --table_only > /dev/null || exit 2
cp "$WORK/runs/msrc_full.md" "$WORK/runs/msrc_full_seeds.csv" "$RESULTS/"
for f in "$WORK"/logs/run*.log; do
  echo "== $f"; tail -n 15 "$f"
done > "$RESULTS/logs_tail.txt"
cat "$RESULTS/msrc_full.md"
# How far each run's graph moved its class maps (docs/groupwise.md, "Its graph barely changes the
# maps"): on the CPU schedules the release network's graph readout stayed an affine copy.
# The probes run at once, each in its own process, as the runs did; their lines keep run order.
mkdir -p "$WORK/probes"
for d in "$WORK"/runs/*/seed*; do
  [ -f "$d/config.json" ] || continue
  name=$(basename "$(dirname "$d")")/$(basename "$d")
  ( echo "$name: $("$PY" -m gwsss_jax.evaluation.graph_probe --workdir="$d" 2>&1 | tail -n 1)" \
      > "$WORK/probes/${name//\//_}.txt" ) &
done
wait
cat "$WORK"/probes/*.txt 2>/dev/null | tee "$RESULTS/graph_probe.txt"
! grep -q ' rc=[1-9]' "$RESULTS/timing.txt"
