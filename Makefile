# The two commands of the README:
#   make demo   install, fetch the default model, start the supervisor, chat with it
#   make test   install, then ruff + mypy + the whole test suite (what .ci/run calls)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint typecheck pytest test-deps bench docs clean

# llama.cpp is compiled by scripts/build-llama.sh, with Intel AMX off (its kernels crash on
# quantized models) and cached under a key of the flags, the compiler and the CPU, so a wheel
# built with other flags is never reused. LLAMA_CMAKE_ARGS adds CMake flags (a CUDA build).
$(STAMP): pyproject.toml scripts/build-llama.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	@echo "Installing smackctl (llama.cpp is compiled only when no build of it is cached)."
	bash scripts/build-llama.sh $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/smackctl start
	$(BIN)/smackctl models pull smollm2
	$(BIN)/smackctl chat --max-tokens 64 "In one sentence: what is the capital of France?"
	@echo
	@echo "The supervisor keeps running: try '$(BIN)/smackctl status', then '$(BIN)/smackctl stop'."

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: install
	$(BIN)/mypy

# the REPL test drives a real terminal through tmux, the service test checks its unit with
# systemd-analyze, the page's tests drive a real headless Chromium (Debian's packages tmux,
# systemd, chromium and its driver)
test-deps:
	@missing=; command -v tmux >/dev/null || missing="$$missing tmux"; \
	command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	[ -z "$$missing" ] || (apt-get update -qq && apt-get install -y -qq $$missing)

pytest: install test-deps
	$(BIN)/python -m pytest

test: lint typecheck pytest

bench: install
	$(BIN)/python -m benchmarks

# completions/, man/smackctl.1 and src/smackctl/cli/help.json are generated from the CLI;
# tests fail when they are stale. docs/screenshots/ are the page's views, taken by its
# browser tests (not compared by any test: a pixel moves with a font)
docs: install test-deps
	$(BIN)/python -m smackctl.cli.docs
	SMACKCTL_SCREENSHOTS=docs/screenshots $(BIN)/python -m pytest -q -p no:cacheprovider \
		tests/test_ui_browser.py

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache
