#!/usr/bin/env bash
# Stage 3 on a short GPU lease, in one script (about 9 minutes on one H100/H200):
#   1. sampling from the shipped bundle on CUDA (stage-2 decoder + stage-1 renderer on the GPU)
#   2. psi_c trained for about 7 minutes on the GPU, two widths at once (the GPU is launch-bound
#      at these sizes, so two processes cost little more than one):
#        c_tiny : the tiny preset's model (block_out_channels 64,128), batch 64
#        c_wide : block_out_channels 96,192, batch 64
#      both with a constant learning rate (the run is cut by time, so no step count is known
#      ahead for a cosine) and EMA 0.9995. On a 2-core CPU the same model sees 3000 x 8 scenes
#      in its 10 minutes.
#   3. the CUDA tests (tests/test_cuda.py), beside the training
# Output (OUTDIR): session.log; logs.tar.gz (pytest_cuda.log, sample_cuda.log, train logs, contact sheet);
#   c_runs.tar.part_* (RUN/c_tiny/c and RUN/c_wide/c without the resumable checkpoint;
#   c_wide's weights in float16 to fit the lease's file limits; join with cat).
# Usage (repo root, package not installed; the latents need only their train split):
#   LATENTS=out/lat64_train bash benchmarks/gpu_ldm.sh OUTDIR
# Locally: cat OUTDIR/c_runs.tar.part_* | tar x -C runs/gpu_c; then put a level next to CPU g and
# f levels trained on the same latents (they must share the latent folder's statistics).
set -u
OUTDIR=${1:-out/gpu_ldm}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
export PYTHONPATH="$PWD/src:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PY:-python3}
LATENTS=${LATENTS:-out/lat64_train}
RUNS=${RUNS:-/tmp/gpu_ldm_runs}
BUDGET_S=${BUDGET_S:-510}          # the whole script, seconds
TRAIN_MIN=${TRAIN_MIN:-}           # training minutes (default: what the budget leaves)
DEVICE=${DEVICE:-cuda}
T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
log() { echo "[$(el)s] $*" | tee -a "$OUTDIR/session.log"; }
mkdir -p "$RUNS"

log "$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1)"
$PY -c "import torch, diffusers, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'diffusers', diffusers.__version__, torch.cuda.get_device_name())" 2>&1 | tee -a "$OUTDIR/session.log"

# 1. sampling on CUDA from the shipped bundle (beside the training start-up)
( timeout 150 $PY -m nfldm.cli sample --run src/nfldm/weights/tiny --num 4 --sampler dpm --steps 20 --seed 0 \
    --out "$RUNS/samples_bundle" --device $DEVICE > "$OUTDIR/sample_cuda.log" 2>&1
  echo "sample rc=$?" >> "$OUTDIR/sample_cuda.log"
  cp "$RUNS"/samples_bundle/*.png "$OUTDIR/" 2>/dev/null ) &
SAMPLE=$!

# 2. psi_c, two widths at once
[ -n "$TRAIN_MIN" ] || TRAIN_MIN=$($PY -c "print(round(($BUDGET_S - $(el) - 75) / 60, 2))")
log "training psi_c for $TRAIN_MIN minutes"
pids=()
for spec in "c_tiny|(64,128)" "c_wide|(96,192)"; do
  name=${spec%%|*}; ch=${spec#*|}
  rm -rf "$RUNS/$name"
  timeout $($PY -c "print(int($TRAIN_MIN * 60 + 60))") $PY -m nfldm.cli train ldm --latents "$LATENTS" \
      --out "$RUNS/$name" --level c --preset tiny --device $DEVICE --quiet --steps 1000000 \
      --set "c.block_out_channels=$ch" --set c.batch_size=64 --set c.decay=constant \
      --set c.ema_decay=0.9995 --set c.max_minutes=$TRAIN_MIN --set c.ckpt_every=2000 --set c.log_every=100 \
      > "$OUTDIR/train_$name.log" 2>&1 &
  pids+=($!)
done

# 3. CUDA tests beside the training
timeout 200 $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py > "$OUTDIR/pytest_cuda.log" 2>&1
log "pytest rc=$? :: $(tail -1 "$OUTDIR/pytest_cuda.log")"
wait $SAMPLE
log "sample :: $(grep -v '^\s*$' "$OUTDIR/sample_cuda.log" | tail -2 | tr '\n' ' ')"
for i in "${!pids[@]}"; do wait "${pids[$i]}"; log "train rc=$?"; done
for name in c_tiny c_wide; do
  log "$name :: $(tail -1 "$RUNS/$name/c/metrics.jsonl" 2>/dev/null)"
done

# pack: no resumable checkpoint; c_wide's EMA weights in float16
$PY - "$RUNS/c_wide/c/model.safetensors" <<'EOF'
import sys
from safetensors import safe_open
from safetensors.torch import load_file, save_file
p = sys.argv[1]
try:
    with safe_open(p, "pt") as f:
        meta = dict(f.metadata() or {})
    meta["nfldm_fp16"] = "1"
    save_file({k: v.half() for k, v in load_file(p).items()}, p + ".tmp", metadata=meta)
    import os; os.replace(p + ".tmp", p)
except FileNotFoundError:
    pass
EOF
tar -C "$RUNS" -cf /tmp/c_runs.tar --exclude=checkpoint.safetensors --exclude=tb c_tiny c_wide
split -b 15M /tmp/c_runs.tar "$OUTDIR/c_runs.tar.part_"
log "packed $(du -sh /tmp/c_runs.tar | cut -f1)"
# the lease returns at most 8 files: logs and pictures in one archive
( cd "$OUTDIR" && tar czf /tmp/gpu_ldm_logs.tar.gz --exclude='c_runs.tar.part_*' --exclude=session.log . \
  && mv /tmp/gpu_ldm_logs.tar.gz logs.tar.gz \
  && find . -maxdepth 1 -type f ! -name 'c_runs.tar.part_*' ! -name logs.tar.gz ! -name session.log -delete )
