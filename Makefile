# TAAR monorepo. The two commands that matter: `make demo` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

export SPARK_LOCAL_IP ?= 127.0.0.1
export AIRFLOW__CORE__LOAD_EXAMPLES ?= False

.PHONY: help venv install lint test test-unit test-fast demo serve bench clean constraints

help:
	@echo "make demo   - whole system end to end on synthetic data, then the service on localhost:8000"
	@echo "make test   - everything CI runs (lint, hadolint, unit, web, ETL, Spark, DAG, fuzz, e2e)"
	@echo "make serve  - the web service against ./var/models and sqlite:///./var/profiles.sqlite3"
	@echo "make bench  - benchmarks under bench/ (results in ./var/bench/)"

$(STAMP): setup.py constraints.txt $(wildcard requirements/*.txt)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip setuptools wheel
	$(PIP) install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/hadolint --failure-threshold warning Dockerfile.web Dockerfile.etl

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(VENV)/bin/pytest -m unit $(PYTEST_ARGS)

serve: $(STAMP)
	TAAR_MODEL_STORE=$${TAAR_MODEL_STORE:-./var/models} \
	TAAR_PROFILE_STORE=$${TAAR_PROFILE_STORE:-sqlite:///./var/profiles.sqlite3} \
	$(VENV)/bin/gunicorn -c python:taar_web.gunicorn_conf taar_web.wsgi:app

demo: $(STAMP)
	$(PY) -m taar_dev.demo

bench: $(STAMP)
	mkdir -p var/bench
	$(PY) -m bench.recommenders
	$(PY) -m bench.jobs
	$(PY) -m bench.profiles
	$(PY) -m bench.profile_reads
	$(PY) -m bench.serve
	$(PY) -m bench.serve_baseline

constraints: $(STAMP)
	{ head -2 constraints.txt; $(PIP) freeze --exclude-editable | grep -v -iE '^(taar|pip|setuptools|wheel)=='; } > constraints.new
	mv constraints.new constraints.txt

clean:
	rm -rf var .pytest_cache .ruff_cache build dist *.egg-info
