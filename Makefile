# Every target creates .venv and installs coxp into it when needed, so each works from a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: demo lint test test-browser bench soak sysdeps clean

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

demo: $(INSTALLED)
	$(BIN)/coxp demo

# Real peers the tests use (Debian's chromium for the browser suite, real servers as upstreams),
# listed in .ci/apt-packages.txt; Playwright's own browser download cannot work here.
sysdeps:
	@bash .ci/sysdeps

# Lint and types first: they take seconds, the suite minutes.
lint: $(INSTALLED)
	$(BIN)/ruff check proxy tests bench
	$(BIN)/mypy

test: lint sysdeps
	$(BIN)/python -m pytest -q

test-browser: $(INSTALLED) sysdeps
	$(BIN)/python -m pytest -q -m browser

bench: $(INSTALLED)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# 100,000 mixed requests through one coxp; fails when descriptors, upstream connections or RSS
# do not come back after the load (bench/soak.py; a 10,000-request run is part of `make test`).
soak: $(INSTALLED)
	$(BIN)/python bench/soak.py $(SOAK_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
