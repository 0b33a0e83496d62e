# capibara-facade — every entry point a developer or CI needs.
#   make run    start the facade on :8000 against the configured upstream (default http://127.0.0.1:8082)
#   make demo   start the bundled demo upstream and the facade in front of it
#   make test   install everything, run the static gates and the whole test suite (what CI runs)
#   make e2e    only the end-to-end tier (real openai SDK, LangChain, Chromium, llama.cpp)
#   make bench  the benchmark: facade vs the direct upstream (and nginx), one table + bench/results/*.json
#   make lock   re-resolve pyproject.toml's ranges into requirements/*.lock (UPGRADE=1: newest releases allowed)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
STAMP  := .make
CONFIG ?=
HOST   ?= 127.0.0.1
PORT   ?= 8000
CONFIG_ARG := $(if $(CONFIG),--config $(CONFIG),)
# What is tested is what is deployed: every install below takes exact versions, hash-checked, from these locks.
RUNTIME_LOCK := requirements/runtime.lock
TEST_LOCK    := requirements/test.lock
TEST_EXTRAS  := test e2e deploy otel

.PHONY: install install-test run demo test check lint format unit e2e bench lock clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Runtime install: what `make run` needs, from the runtime lock; then the project itself, editable, built by the
# locked setuptools (--no-build-isolation) and without dependencies of its own (--no-deps): nothing is resolved here.
$(STAMP)/runtime: pyproject.toml $(RUNTIME_LOCK) | $(PY)
	$(PY) -m pip install -q --require-hashes -r $(RUNTIME_LOCK)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@mkdir -p $(STAMP) && touch $@

# Everything the suite needs: the test lock (every extra; llama.cpp compiles once from its sdist, pip's wheel cache
# makes it seconds after) and the Debian packages listed in scripts/system-packages.txt.
$(STAMP)/test: pyproject.toml $(TEST_LOCK) scripts/system-packages.txt | $(PY)
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PY) -m pip install -q --require-hashes -r $(TEST_LOCK)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	bash scripts/install-system-packages.sh
	@mkdir -p $(STAMP) && touch $@

install: $(STAMP)/runtime
install-test: $(STAMP)/test

run: $(STAMP)/runtime
	$(BIN)/capibara-facade serve $(CONFIG_ARG) --host $(HOST) --port $(PORT)

demo: $(STAMP)/runtime
	$(BIN)/capibara-facade demo $(CONFIG_ARG) --host $(HOST) --port $(PORT)

check: $(STAMP)/test
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

format: $(STAMP)/test
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: check
	$(BIN)/pytest

unit: $(STAMP)/test
	$(BIN)/pytest tests/unit tests/integration

e2e: $(STAMP)/test
	$(BIN)/pytest tests/e2e

bench: $(STAMP)/test
	$(PY) -m bench

# The locks, with uv (pinned; only this target needs it). One resolution for every platform (--universal) from
# Python 3.11 up. The runtime lock is resolved within the test lock, so the image runs the very versions the suite
# tested. Existing pins are kept where pyproject.toml still allows them, unless UPGRADE=1.
UV_VERSION := 0.13.9
LOCK_TOOLS := $(STAMP)/uv-$(UV_VERSION)
LOCK := $(LOCK_TOOLS)/bin/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes \
	--custom-compile-command 'make lock' $(if $(UPGRADE),--upgrade,)

$(LOCK_TOOLS)/bin/uv:
	$(PYTHON) -m venv $(LOCK_TOOLS)
	$(LOCK_TOOLS)/bin/python -m pip install -q uv==$(UV_VERSION)

lock: $(LOCK_TOOLS)/bin/uv
	$(LOCK) pyproject.toml requirements/build.in $(TEST_EXTRAS:%=--extra %) -o $(TEST_LOCK)
	$(LOCK) pyproject.toml requirements/build.in --constraint $(TEST_LOCK) -o $(RUNTIME_LOCK)

clean:
	rm -rf $(VENV) $(STAMP) .mypy_cache .ruff_cache .pytest_cache
