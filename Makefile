# Two commands do all set-up on a fresh machine with Python 3.11 and pip:
#   make demo   collect a small ViZDoom dataset, check it and write its contact sheet
#   make test   run the test suite
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
OUT    ?= out/demo

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
	$(BIN)/nfldm data vizdoom --out $(OUT)/data --scenes 8 --frames 24 --resolution 64 --seed 0
	$(BIN)/nfldm data check $(OUT)/data
	$(BIN)/nfldm data preview $(OUT)/data --out $(OUT)/contact_sheet.png

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) out
