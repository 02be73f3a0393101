# Breakwater: `make demo` runs everything on a fresh machine, `make test` passes the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

TUFJS := tests/tufjs

.PHONY: install tufjs demo test test-fast migrate bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP) tufjs

# tuf-js, the second TUF client the tests check the served metadata with, where node is installed.
tufjs:
	@if command -v npm >/dev/null 2>&1; then \
	  if [ ! -f $(TUFJS)/node_modules/.package-lock.json ] || [ $(TUFJS)/package-lock.json -nt $(TUFJS)/node_modules/.package-lock.json ]; then \
	    npm ci --prefix $(TUFJS) --no-audit --no-fund --loglevel=error; \
	  fi; \
	else echo "node is not installed: the tuf-js checks are skipped"; fi

migrate: install
	$(PY) manage.py migrate --noinput

demo: migrate
	$(PY) -m factory.project.run_demo

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install
	$(PY) bench/run.py

clean:
	rm -rf var/ .pytest_cache
