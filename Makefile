# Every target bootstraps what it needs: a fresh Linux machine with Python 3.11 is enough.
SHELL := /bin/bash
PYTHON ?= python3
POETRY_VERSION := 2.5.1
TOOLS := .tools
POETRY := $(TOOLS)/poetry/bin/poetry
VENV := .venv
export POETRY_VIRTUALENVS_IN_PROJECT := true
export POETRY_NO_INTERACTION := 1
RUN := $(POETRY) run

.PHONY: venv bytecode up test bench lint lint-deploy format check chaos docker docker-up docker-down clean

$(POETRY):
	$(PYTHON) -m venv $(TOOLS)/poetry
	$(TOOLS)/poetry/bin/pip install --quiet "poetry==$(POETRY_VERSION)"

# --compile: poetry writes no bytecode by default; where PYTHONDONTWRITEBYTECODE is set, every
# process the tests start would compile each module it imports again.
$(VENV)/.installed: $(POETRY) pyproject.toml poetry.lock
	$(POETRY) install --quiet --extras embedded --compile
	touch $@

venv: $(VENV)/.installed ## install the project and its tools into .venv

# The project is installed editable, so its own modules are compiled where they are. Where
# PYTHONDONTWRITEBYTECODE is set (CI images, containers), every `resizer` process a test starts
# would otherwise compile each module it imports again. Up-to-date files are skipped.
bytecode: venv
	$(RUN) python -m compileall -q resizer tests bench

up: bytecode ## run the whole service on this machine (embedded Redis, web, workers, recovery)
	$(RUN) resizer up

test: bytecode ## run the test suite (unit on fakeredis, integration on a real Redis server)
	$(RUN) pytest

# The benchmark's own dependencies (pyvips with its bundled libvips, scikit-image for the corpus
# photos) are an optional group: the service never needs them. BENCHMARKS.md explains the output.
# RESIZER_BASELINE=/path/to/a/checkout (with its own `make venv`) runs the baseline's code beside
# ours in the sections that compare with it; without it they print its recorded figures.
bench: venv ## benchmark: kernel vs naive Pillow and pyvips, end to end, API, memory
	$(POETRY) install --quiet --extras embedded --with bench --compile
	$(RUN) python -m bench.run

lint: venv lint-deploy ## ruff check, ruff format --check, mypy --strict, the import rule, lint-deploy
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy
	$(RUN) lint-imports

# Offline checks of the deployment files (no Docker engine or cluster needed): the Compose files
# (docker-compose.yml, and docker-compose.cluster.yml on top of it) against the Compose
# Specification schema, the Dockerfile with hadolint, the Kubernetes
# manifests against the Kubernetes schemas (strict: unknown fields fail), and, where kubectl
# exists, the kustomize rendering of deploy/k8s too.
K8S_MANIFESTS := $(filter-out %/kustomization.yaml,$(wildcard deploy/k8s/*.yaml deploy/k8s/*/*.yaml))

lint-deploy: venv ## offline checks of Dockerfile, the Compose files and deploy/k8s
	$(RUN) check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml docker-compose.cluster.yml
	$(RUN) hadolint --failure-threshold style Dockerfile
	$(RUN) kubernetes-validate --strict --quiet $(K8S_MANIFESTS)
	@if command -v kubectl >/dev/null 2>&1; then \
	  set -o pipefail; \
	  kubectl kustomize deploy/k8s | $(RUN) kubernetes-validate --strict --quiet - \
	  && echo "ok -- kustomize build deploy/k8s validates"; \
	else echo "kubectl not found: kustomize rendering not checked (the raw manifests were)"; fi

format: venv
	$(RUN) ruff check --fix .
	$(RUN) ruff format .

check: format lint test

# The chaos and load scenarios (tests/chaos, marked `chaos`, so not in `make test`): real
# `resizer` processes SIGKILLed, SIGSTOPped, SIGTERMed, a real Redis killed and filled up.
# A few minutes on 2 cores; ends with one table of figures (see docs/chaos.md).
chaos: bytecode ## the chaos and load scenarios; prints the table of figures
	$(RUN) pytest tests/chaos -m chaos -q -p no:cacheprovider

docker: docker-down ## clean, build, up
	docker compose build --pull
	docker compose up -d

docker-up:
	docker compose up -d

docker-down:
	docker compose down --remove-orphans --volumes

clean:
	rm -rf $(VENV) $(TOOLS) .mypy_cache .ruff_cache .pytest_cache
