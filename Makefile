# Two commands on a fresh machine: `make run` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install data run test lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

data: install
	$(VENV)/bin/dvc pull -q

# The main job: the benchmark pipeline on the KFP local runner, `tiny` preset, one item per
# attribute, tracked in ./mlflow.db (see `mlflow ui`). Flags: python -m pipelines run-local --help
run: data
	$(PY) -m pipelines run-local --per-attribute 1 --model tiny --no-segment --steps 60 --lr 1e-4 \
		--checkpoint-every 20 --gen-num-steps 20 --gen-seeds 0 1

test: data
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs
