#!/usr/bin/env bash
# Everything a short GPU lease should check, in one script (about 9 minutes on one H100/H200):
#   1. the CUDA tests (tests/test_cuda.py + the splat/render tests)       -> pytest_cuda.log
#   2. a real ViZDoom dataset, collected there (320 scenes x 24 frames at 64 x 64, seed 0:
#      the same command as the CPU results in docs/scene-ae.md)          -> collect.log
#   3. a stage-1 sweep: SWEEP configs of the tiny preset trained at once on the one GPU,
#      each the tiny preset's 2400 steps (or SWEEP_MINUTES), then evaluated on the test split
#                                                                       -> sweep.txt, sweep.tar.gz
#   4. benchmarks at the tiny and paper sizes on CUDA                     -> bench_*.log
# Usage (repo root; the package need not be installed):  bash benchmarks/gpu_session.sh OUTDIR
# On a machine whose python has no vizdoom, install the wheel first (see docs/gpu.md).
set -u
OUT=${1:-out/gpu}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export PYTHONPATH="$PWD/src:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PY:-python3}
DATA=$(realpath -m "${DATA:-out/gpu_data}")
RUNS=$(realpath -m "${RUNS:-out/gpu_runs}")
SWEEP_MINUTES=${SWEEP_MINUTES:-4}
DEVICE=${DEVICE:-cuda}
mkdir -p "$RUNS"
T0=$(date +%s)
log() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$OUT/session.log"; }

log "$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1)"
$PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, torch.cuda.get_device_name())" 2>&1 | tee -a "$OUT/session.log"

# 2. data, on the CPU, while the tests run on the GPU
if [ ! -f "$DATA/dataset.json" ]; then
  ( cd /tmp && $PY -m nfldm.cli data vizdoom --out "$DATA" --scenes 320 --frames 24 --resolution 64 \
      --seed 0 --quiet > "$OUT/collect.log" 2>&1; echo "collect rc=$?" >> "$OUT/collect.log" ) &
  COLLECT=$!
fi

# 1. CUDA tests
[ "${SKIP_TESTS:-0}" = 1 ] || timeout 240 $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_splat_render.py > "$OUT/pytest_cuda.log" 2>&1
log "pytest rc=$? :: $(tail -1 "$OUT/pytest_cuda.log")"

[ -n "${COLLECT:-}" ] && wait $COLLECT
log "data :: $(tail -2 "$OUT/collect.log" | tr '\n' ' ')"

# 3. sweep: NAME|--set overrides
SWEEP=${SWEEP:-"base|
render_down1|--set render_down=1
feat32|--set feat_dim=32
dec128|--set decoder_channels=128
lr2e-3|--set lr=2e-3
batch8|--set batch_size=8
stride1|--set lift_stride=1
geo_light|--set w_depth=0.3 --set w_occ=0.05
combo|--set render_down=1 --set feat_dim=32 --set decoder_channels=128"}
AMP=""
rm -rf "$RUNS/_smoke"
timeout 120 $PY -m nfldm.cli train scene-ae --data "$DATA" --out "$RUNS/_smoke" --preset smoke --steps 3 \
    --device $DEVICE --quiet > "$OUT/smoke.log" 2>&1 || { AMP="--set amp=off"; log "bf16 smoke failed: sweep without amp"; }
pids=()
while IFS='|' read -r name sets; do
  [ -z "$name" ] && continue
  rm -rf "$RUNS/$name"
  timeout $(( ${SWEEP_MINUTES%.*} * 60 + 90 )) $PY -m nfldm.cli train scene-ae --data "$DATA" --out "$RUNS/$name" \
      --preset tiny --device $DEVICE --quiet --set max_minutes=$SWEEP_MINUTES --set num_workers=1 $sets $AMP \
      > "$RUNS/train_$name.log" 2>&1 &
  pids+=($!)
done <<< "$SWEEP"
wait "${pids[@]}"
log "sweep trained"
while IFS='|' read -r name sets; do
  [ -z "$name" ] && continue
  timeout 120 $PY -m nfldm.cli eval scene-ae --run "$RUNS/$name" --data "$DATA" --split test \
      --out "$RUNS/$name/metrics_test.json" --quiet --device $DEVICE >> "$OUT/eval.log" 2>&1 &
done <<< "$SWEEP"
wait
$PY - "$RUNS" <<'EOF' | tee "$OUT/sweep.txt"
import json, sys
from pathlib import Path
print(f"{'config':14s} {'steps':>6s} {'steps/s':>8s} {'PSNR':>6s} {'SSIM':>6s} {'depth':>6s} | nearest PSNR/SSIM")
for run in sorted(Path(sys.argv[1]).iterdir()):
    m = run / "metrics_test.json"
    if not run.is_dir():
        continue
    if run.name.startswith("_") or not m.exists():
        print(f"{run.name:14s} (no metrics)"); continue
    r = json.loads(m.read_text())
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    step = json.loads((run / "checkpoint.json").read_text())["step"]
    sps = sum(x["steps_per_s"] for x in lines[1:]) / max(len(lines) - 1, 1) if len(lines) > 1 else float("nan")
    print(f"{run.name:14s} {step:6d} {sps:8.2f} {r['model']['psnr']:6.2f} {r['model']['ssim']:6.3f} "
          f"{r['model']['depth_abs_rel_median']:6.3f} | {r['nearest_frame']['psnr']:.2f}/{r['nearest_frame']['ssim']:.3f}")
EOF
cp "$OUT/smoke.log" "$OUT/collect.log" "$RUNS/" 2>/dev/null; rm -f "$OUT/smoke.log" "$OUT/collect.log"
tar czf "$OUT/sweep.tar.gz" --exclude='*.safetensors' --exclude='tb' "$RUNS" 2>/dev/null
log "sweep done"

# 4. benchmarks (GPU otherwise idle)
[ "${BENCH:-1}" = 1 ] || exit 0
timeout 150 $PY benchmarks/train_step.py --device $DEVICE --preset tiny --steps 10 > "$OUT/bench_train.log" 2>&1
log "train_step tiny rc=$?"
timeout 150 $PY benchmarks/train_step.py --device $DEVICE --preset paper --steps 5 >> "$OUT/bench_train.log" 2>&1
log "train_step paper rc=$?"
timeout 200 $PY benchmarks/splat_render.py --device $DEVICE --budget 4 --repeats 3 > "$OUT/bench_splat_render.log" 2>&1
log "splat_render rc=$?"
