# Two commands do everything on a fresh machine with only Python 3.11 and pip:
#   make run   — install, start embedded PostgreSQL + Redis, migrate, seed a demo, start all processes
#   make test  — install dev dependencies, run the whole suite against real PostgreSQL + Redis
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test bench bench-peers lint format clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found: Modelyard needs Python 3.11 (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the dependency pins change. constraints.txt is the lock: the exact
# versions that were tested. The README's `.venv/bin/modelyard` is the editable client, so a
# change to its pyproject (dependencies, entry point) reinstalls too.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt clients/python/pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]' -e ./clients/python
	@touch $(STAMP)

install: $(STAMP)

run: install
	BENTOML_DO_NOT_TRACK=True $(BIN)/python -m devstack run

# Three pytest-xdist workers, a test file each at a time (--dist loadfile keeps a file's
# module fixtures -- trained models, live stacks -- built once). The files that start
# servers go first, in tests/conftest.py's order (xdist's own order puts the files with the
# most tests first). Most of the suite waits on servers it started: serially the two cores
# of CI were half idle. Each worker has its own test database (pytest-django), Redis
# databases and artifact folder (config/settings/test.py; up to 3 workers).
# TEST_WORKERS=0 runs in one process. The 15 slowest tests are listed at the end (where the
# suite's time goes, in CI's output too).
TEST_WORKERS ?= 3
test: install
	BENTOML_DO_NOT_TRACK=True $(BIN)/python -m devstack test -- -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15 $(PYTEST_ARGS)

bench: install
	BENTOML_DO_NOT_TRACK=True $(BIN)/python -m devstack test -- -m benchmark -s tests/benchmarks $(PYTEST_ARGS)

# Modelyard against MLServer on the same model files (tests/benchmarks/peers/bench.py). MLServer
# lives in a venv of its own, pinned by mlserver-requirements.txt; not part of `make test`.
MLSERVER_VENV := .bench/mlserver-venv
$(MLSERVER_VENV)/.installed: tests/benchmarks/peers/mlserver-requirements.txt
	$(PYTHON) -m venv $(MLSERVER_VENV)
	$(MLSERVER_VENV)/bin/python -m pip install --quiet -r tests/benchmarks/peers/mlserver-requirements.txt
	@touch $@

bench-peers: install $(MLSERVER_VENV)/.installed
	BENTOML_DO_NOT_TRACK=True $(BIN)/python -m devstack test -- -m benchmark -s -p no:cacheprovider tests/benchmarks/peers $(PYTEST_ARGS)

# mypy's django plugin imports config.settings.test: the settings give every required value a
# default, and a fixed (never created) media root keeps the settings from making a temp dir
# on every run. No service is contacted.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	MODELYARD_TEST_MEDIA_ROOT=$(CURDIR)/.data/typecheck-media BENTOML_DO_NOT_TRACK=True $(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .data
