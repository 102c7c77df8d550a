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

.PHONY: venv up test lint format check docker docker-up docker-down clean

$(POETRY):
	$(PYTHON) -m venv $(TOOLS)/poetry
	$(TOOLS)/poetry/bin/pip install --quiet "poetry==$(POETRY_VERSION)"

$(VENV)/.installed: $(POETRY) pyproject.toml poetry.lock
	$(POETRY) install --quiet
	touch $@

venv: $(VENV)/.installed ## install the project and its tools into .venv

up: venv ## run the whole service on this machine (embedded Redis, web, workers, recovery)
	$(RUN) resizer up

test: venv ## run the test suite (unit on fakeredis, integration on a real Redis server)
	$(RUN) pytest

lint: venv ## ruff check, ruff format --check, mypy --strict
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy

format: venv
	$(RUN) ruff check --fix .
	$(RUN) ruff format .

check: format lint test

docker: docker-down ## clean, build, up
	docker compose build --pull
	docker compose up -d

docker-up:
	docker compose up -d

docker-down:
	docker compose down --remove-orphans --volumes

clean:
	rm -rf $(VENV) $(TOOLS) .mypy_cache .ruff_cache .pytest_cache
