# maskdet: every task a user runs, each one setting up .venv first when it is missing or stale.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: install browser pipeline test test-notebooks test-pytest lab dashboard lint format clean

install: $(STAMP)

# One install of the whole stack; ultralytics pulls the GUI OpenCV, so the headless build of the same
# version is laid over it (servers and CI have no display).
$(STAMP): setup.py settings.ini
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -e ".[all]"
	$(BIN)/pip install --quiet --force-reinstall --no-deps \
	  "opencv-python-headless==$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("opencv-python-headless"))')"
	$(BIN)/pip check
	touch $(STAMP)

pipeline: install
	$(BIN)/dvc repro

test: test-notebooks test-pytest

test-notebooks: install
	$(BIN)/nbdev_test --do_print --timing

# Debian's Chromium for the browser tests (Playwright drives it; never `playwright install`).
browser:
	command -v chromium >/dev/null || ( $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y -qq chromium )

# pytest exits 5 when it collects no test: not an error here.
test-pytest: install browser
	$(BIN)/pytest tests/ || [ $$? -eq 5 ]

lab: install
	$(BIN)/jupyter lab --notebook-dir=nbs

# The Voila dashboards (webcam detection, monitoring and drift) on http://127.0.0.1:8866
dashboard: install
	$(BIN)/maskdet dashboard

lint: install
	$(BIN)/ruff check maskdet tests benchmarks

clean:
	rm -rf .cache .pytest_cache .ruff_cache _docs _proc logs runs test-artifacts
	find . -name __pycache__ -not -path "./$(VENV)/*" -prune -exec rm -rf {} +
