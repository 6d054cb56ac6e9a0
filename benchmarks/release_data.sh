#!/usr/bin/env bash
# The data the shipped bundle was trained on, made again on a new machine or a wiped disk: the
# release windows, their V and latents, and the turned-scenes latents (4 turned copies of every train
# window) that the BEV psi_c was trained on. Most benchmarks and studies of the release model read them.
#
#     bash benchmarks/release_data.sh [OUT]        # OUT defaults to out: OUT/release/{data,voxels,latents}, OUT/lat_aug4
#
# Each step resumes (a step already done is skipped or finds its scenes there). On the 2-core CPU,
# 2026-12-07 (AVX2): 6 + 12 + 5 + 16 minutes; 18 GB of V. docs/quickstart.md "The release data again".
set -euo pipefail
OUT=${1:-out}
B=$(python -c "from nfldm.pipeline.bundle import PACKAGED; print(PACKAGED)")
if [ ! -f "$OUT/release/data/dataset.json" ]; then
    nfldm data vizdoom --out "$OUT/release/data" --scenes 2048                 # the recipe's windows (seed 0)
fi
nfldm encode-voxels --scene-ae "$B/scene_ae" --data "$OUT/release/data" --out "$OUT/release/voxels"
nfldm encode-latents --run "$B/latent_ae" --voxels "$OUT/release/voxels" --out "$OUT/release/latents" --stats-from "$B"
mkdir -p "$OUT/lat_aug4"
cp -n "$OUT"/release/latents/scene_*.safetensors "$OUT/lat_aug4/"
nfldm encode-latents --run "$B/latent_ae" --voxels "$OUT/release/voxels" --out "$OUT/lat_aug4" --augment 4 \
    --stats-from "$OUT/release/latents"
