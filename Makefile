# maskdet: every task a user runs, each one setting up .venv first when it is missing or stale.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)
export DVC_NO_ANALYTICS := 1

# apt-get needs root: through sudo unless make runs as root.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install browser pipeline test test-notebooks test-pytest lab dashboard lint format clean docs readme picture pull \
	docker-tools docker-build docker-up docker-down test-docker

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

# The pipeline, then its data and models pushed to the DVC remote (.dvc/config: a folder beside the project),
# from which `make pull` gives another clone the same model without training.
pipeline: install
	$(BIN)/dvc repro
	$(BIN)/dvc push

pull: install
	$(BIN)/dvc pull

test: test-notebooks test-pytest test-docker

test-notebooks: install
	$(BIN)/nbdev_test --do_print --timing

# Debian's Chromium for the browser tests (Playwright drives it; never `playwright install`).
browser:
	command -v chromium >/dev/null || ( $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium )

# pytest exits 5 when it collects no test: not an error here.
test-pytest: install browser
	$(BIN)/pytest tests/ --ignore=tests/docker || [ $$? -eq 5 ]

# Docker: Debian's engine, compose and debootstrap (for the base image when no registry can supply it).
docker-tools:
	command -v dockerd >/dev/null && command -v debootstrap >/dev/null && \
	  ( docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null ) || \
	  ( $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq docker.io docker-compose debootstrap )

# The stack of deployment/docker-compose.yml, serving models/ with data/ as the drift reference (a running
# Docker daemon is needed: `sudo dockerd &` where none runs).
COMPOSE = $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
STACK = MASKDET_MODELS_DIR=$(abspath models) MASKDET_DATA_DIR=$(abspath data) $(COMPOSE) -p maskdet -f deployment/docker-compose.yml

# A rebuild leaves the previous images untagged: they are removed (each set is ~4 GB).
docker-build: docker-tools
	deployment/build-base.sh
	$(STACK) build
	docker image prune -f --filter label=maskdet.service

# The stack's secrets (README, "Security"): random ones written once to deployment/secrets.env (not in git,
# readable by its owner only); values exported in the environment win over the file.
SECRETS := deployment/secrets.env

$(SECRETS):
	umask 077 && for name in MASKDET_API_KEYS MASKDET_DASHBOARD_TOKEN MLFLOW_TRACKING_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY; do \
	  echo "$$name=$$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')"; done > $@
	@echo "wrote $@: the API key, dashboard token and MLflow admin password of the stack"

docker-up: docker-build $(SECRETS)
	$(STACK) --env-file $(SECRETS) up -d
	@echo "API http://127.0.0.1:$${MASKDET_API_PORT:-8000}/docs  dashboards http://127.0.0.1:$${MASKDET_DASHBOARD_PORT:-8866}/?token=...  MLflow http://127.0.0.1:$${MASKDET_MLFLOW_PORT:-5000}/ (secrets: $(SECRETS))"

docker-down: $(SECRETS)
	$(STACK) --env-file $(SECRETS) down

# Builds the images, starts the stack on free ports, checks it end to end, removes it (its own daemon if none runs).
test-docker: install docker-tools
	$(BIN)/pytest -s -rs tests/docker

lab: install
	$(BIN)/jupyter lab --notebook-dir=nbs

# The Voila dashboards (webcam detection, monitoring and drift) on http://127.0.0.1:8866
dashboard: install
	$(BIN)/maskdet dashboard

# The docs site, from the notebooks and docs/ (maskdet.docs), into _docs/; strict: a broken link fails it.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# The pictures of the README and the model card (docs/images/): test photos with the detections of the model in models/.
picture: install
	$(BIN)/python -c "from maskdet.docs import write_pictures; write_pictures()"

# README.md from nbs/index.ipynb (run after changing the notebook; a test checks that they match).
readme: install
	$(BIN)/python -c "from maskdet.docs import write_readme; write_readme()"

lint: install
	$(BIN)/ruff check maskdet tests benchmarks

clean:
	rm -rf .cache .pytest_cache .ruff_cache _docs _proc logs runs test-artifacts
	find . -name __pycache__ -not -path "./$(VENV)/*" -prune -exec rm -rf {} +
