# Every target creates .venv and installs coxp into it when needed, so each works from a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: demo test test-browser bench chromium clean

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

demo: $(INSTALLED)
	$(BIN)/coxp demo

# The browser suite drives Debian's chromium; Playwright's own browser download cannot work here.
chromium:
	@test -x /usr/bin/chromium || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

test: $(INSTALLED) chromium
	$(BIN)/python -m pytest -q

test-browser: $(INSTALLED) chromium
	$(BIN)/python -m pytest -q -m browser

bench: $(INSTALLED)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
