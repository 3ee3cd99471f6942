# cyberstar: the two commands a user needs are `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
SYSTEM_PYTHON := /usr/bin/python3

.PHONY: install host venv test demo build lint bench clean

install: host venv

host:
	bash scripts/setup-host.sh

# BCC and Mininet are Debian packages for /usr/bin/python3: the venv must see system site-packages.
venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(SYSTEM_PYTHON) -m venv --system-site-packages $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	touch $@

test: install
	$(PY) -m pytest -q

demo: install
	$(VENV)/bin/cyberstar demo

build: venv
	$(VENV)/bin/cyberstar build

lint: venv
	$(VENV)/bin/ruff check controller tests bench
	$(VENV)/bin/ruff format --check controller tests bench

bench: install
	$(PY) bench/xdp_fastpath.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info controller/*.egg-info
