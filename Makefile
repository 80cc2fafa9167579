# Two entry points: `make run` (install + the whole pipeline on the bundled demo) and
# `make test` (install + the test suite). Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test]"
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
