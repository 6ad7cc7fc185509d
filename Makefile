# Two commands: `make demo` (venv + demo set + every notebook → submissions/demo.csv) and
# `make test` (venv + test suite). PYTHON picks the interpreter that creates the venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: demo test lint clean-demo bundle first-contact publish

# The venv for developing the kit: runtime + on-demand extras + tools (requirements-dev.txt).
$(BIN)/.installed: requirements.txt requirements-extras.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

demo: $(BIN)/.installed
	$(BIN)/python -m utils.dev.pipeline demo

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

# One offline bundle for Colab and Kaggle: dist/mai-kit-bundle.zip (the kit's code, wheels for
# what the platforms lack, the WEIGHTS files given). Needs the package index; wheels are cached.
bundle: $(BIN)/.installed
	$(BIN)/python -m utils.dev.bundle $(if $(WEIGHTS),--weights $(WEIGHTS))

# A new user's first contact, each in a fresh venv: the bundle offline, a Colab-like runtime
# online. Slow (minutes), so not part of `make test`.
first-contact: $(BIN)/.installed
	$(BIN)/python -m pytest -q -s -m first_contact tests/test_first_contact.py tests/test_kaggle_quickstart.py

# Write notebooks/setup_cell.py into every notebook; REPO=<git URL> also sets KIT_REPO + badges.
publish: $(BIN)/.installed
	$(BIN)/python -m utils.dev.publish $(if $(REPO),--repo $(REPO))

lint: $(BIN)/.installed
	$(BIN)/ruff check .

clean-demo:
	rm -rf data/demo runs/demo runs/demo_quickstart submissions/demo.csv submissions/quickstart.csv \
	  submissions/quickstart.blend.json
