# Two commands do all set-up on a fresh machine with Python 3.11 and pip:
#   make demo   collect a small ViZDoom dataset, check it, write its contact sheet, train the
#               scene auto-encoder briefly, evaluate it and render a fly-through, then encode
#               the scenes' voxel grids, train the latent auto-encoder briefly, evaluate it,
#               write the latents, train the three latent diffusion levels briefly, sample 4
#               scenes (frames, fly-throughs, meshes, contact sheet) and score them
#   make test   run the test suite
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
OUT    ?= out/demo
DEMO_STEPS ?= 150
DEMO_LAE_STEPS ?= 100
DEMO_LDM_STEPS ?= 60

.PHONY: demo test install clean

$(BIN)/nfldm: pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (nfldm needs Python 3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	@touch $@

install: $(BIN)/nfldm

demo: install
	$(BIN)/nfldm data vizdoom --out $(OUT)/data --scenes 24 --frames 24 --resolution 64 --seed 0
	$(BIN)/nfldm data check $(OUT)/data
	$(BIN)/nfldm data preview $(OUT)/data --out $(OUT)/contact_sheet.png
	$(BIN)/nfldm train scene-ae --data $(OUT)/data --out $(OUT)/scene_ae --preset tiny --steps $(DEMO_STEPS) --set ema_decay=0.95 --resume
	$(BIN)/nfldm eval scene-ae --run $(OUT)/scene_ae --data $(OUT)/data --split test --out $(OUT)/scene_ae/metrics_test.json
	$(BIN)/nfldm render --run $(OUT)/scene_ae --data $(OUT)/data --split test --out $(OUT)/flythrough.mp4
	$(BIN)/nfldm encode-voxels --scene-ae $(OUT)/scene_ae --data $(OUT)/data --out $(OUT)/voxels
	$(BIN)/nfldm train latent-ae --voxels $(OUT)/voxels --out $(OUT)/latent_ae --preset tiny --steps $(DEMO_LAE_STEPS) --resume
	$(BIN)/nfldm eval latent-ae --run $(OUT)/latent_ae --voxels $(OUT)/voxels --split test --out $(OUT)/latent_ae/metrics_test.json
	$(BIN)/nfldm encode-latents --run $(OUT)/latent_ae --voxels $(OUT)/voxels --out $(OUT)/latents
	$(BIN)/nfldm train ldm --latents $(OUT)/latents --out $(OUT)/ldm --level all --preset tiny --steps $(DEMO_LDM_STEPS) --resume
	$(BIN)/nfldm sample --run $(OUT)/ldm --num 4 --sampler dpm --steps 20 --seed 0 --out $(OUT)/samples
	$(BIN)/nfldm eval generation --samples $(OUT)/samples --data $(OUT)/data --split test --out $(OUT)/samples/metrics.json

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) out
