# Two commands: `make demo` (venv + demo set + every notebook → submissions/demo.csv) and
# `make test` (venv + test suite). PYTHON picks the interpreter that creates the venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: demo test lint clean-demo kaggle first-contact

$(BIN)/.installed: requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

demo: $(BIN)/.installed
	$(BIN)/python -m utils.dev.pipeline demo

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

# The offline kit for Kaggle (dist/kaggle/mai-kit): kit files, wheels Kaggle lacks, WEIGHTS.
kaggle: $(BIN)/.installed
	$(BIN)/python -m utils.dev.kaggle $(if $(WEIGHTS),--weights $(WEIGHTS))

# A new user's first contact, online (clone) and offline (the kit from `make kaggle`), each in a
# fresh venv with only torch, papermill and ipykernel: slow, so not part of `make test`.
first-contact: $(BIN)/.installed
	$(BIN)/python -m pytest -q -s -m first_contact tests/test_first_contact.py

lint: $(BIN)/.installed
	$(BIN)/ruff check .

clean-demo:
	rm -rf data/demo runs/demo submissions/demo.csv
