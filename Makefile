# capibara-facade — every entry point a developer or CI needs.
#   make run    start the facade on :8000 against the configured upstream (default http://127.0.0.1:8082)
#   make demo   start the bundled demo upstream and the facade in front of it
#   make test   install everything, run the static gates and the whole test suite (what CI runs)
#   make e2e    only the end-to-end tier (real openai SDK, LangChain, Chromium, llama.cpp)
#   make bench  the benchmark: facade vs the direct upstream (and nginx), one table + bench/results/*.json

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
STAMP  := .make
CONFIG ?=
HOST   ?= 127.0.0.1
PORT   ?= 8000
CONFIG_ARG := $(if $(CONFIG),--config $(CONFIG),)

.PHONY: install install-test run demo test check lint format unit e2e bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Runtime install: what `make run` needs.
$(STAMP)/runtime: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e .
	@mkdir -p $(STAMP) && touch $@

# Everything the suite needs: Python extras (llama.cpp compiles once; pip's wheel cache makes it seconds after)
# and the Debian packages listed in scripts/system-packages.txt.
$(STAMP)/test: pyproject.toml scripts/system-packages.txt | $(PY)
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PY) -m pip install -q -e '.[test,e2e,deploy]'
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

clean:
	rm -rf $(VENV) $(STAMP) .mypy_cache .ruff_cache .pytest_cache
