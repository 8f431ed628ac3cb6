# Two commands on a fresh machine: `make run` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install data run test browser pipelines lint clean services-up services-down image

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

data: install
	$(VENV)/bin/dvc pull -q

# The main job: the benchmark pipeline on the KFP local runner with the Attribute World model
# (shipped in the package, ostaf/world/model/) on held-out world references, two per attribute (one named, one
# novel), with the `world` recipe, then the methods that won on validation references (ostaf/recipes.py):
# `disentangled` (the token on the noisy band), then each attribute's views (`views` for shapes, `appearance-views`,
# `style-views`); tracked in ./mlflow.db.
# Flags: python -m pipelines run-local --help
run: data
	$(PY) -m pipelines run-local --per-attribute 2 --model attribute-world --recipe world disentangled views appearance-views style-views

test: data browser
	$(PY) -m pytest -q

# the HTML report's test renders the report in a headless Chromium (Debian's package), installed when missing
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
	  echo "installing chromium for the HTML report's test (apt-get)"; \
	  $(SUDO) apt-get install -y -q chromium >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q chromium >/dev/null; } || \
	  echo "could not install chromium: tests/test_html_report.py will fail until it is (apt-get install -y chromium)"; }

# the compiled pipelines for the KFP UI ("upload this file"): build/pipelines/attribute_{benchmark,personalization}.yaml
pipelines: install
	$(PY) -m pipelines compile --out build/pipelines

# development services on 127.0.0.1: MLflow (artifacts in S3) + an S3 stand-in (infra/local)
services-up: data
	$(PY) infra/local/services.py start

services-down:
	$(PY) infra/local/services.py stop

# the component image (infra/docker; podman or docker)
image:
	infra/docker/build.sh

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs
