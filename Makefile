# cyberstar: the two commands a user needs are `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
SYSTEM_PYTHON := /usr/bin/python3

.PHONY: install host venv p4rt-shell test demo build lint bench clean placement-model

install: host venv p4rt-shell

host:
	bash scripts/setup-host.sh

# BCC and Mininet are Debian packages for /usr/bin/python3: the venv must see system site-packages.
venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(SYSTEM_PYTHON) -m venv --system-site-packages $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	touch $@

# p4runtime-shell pins protobuf < 3.21: it gets its own venv, outside the project's runtime.
P4RT_VENV := .venv-p4rt
p4rt-shell: $(P4RT_VENV)/.installed

$(P4RT_VENV)/.installed:
	test -x $(P4RT_VENV)/bin/python || $(SYSTEM_PYTHON) -m venv $(P4RT_VENV)
	$(P4RT_VENV)/bin/pip install -q --upgrade pip
	$(P4RT_VENV)/bin/pip install -q p4runtime-shell==0.0.6
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

# The packaged placement model: its recipe is controller/cyberstar/orchestrator/recipe.py.
placement-model: venv
	OMP_NUM_THREADS=1 $(VENV)/bin/cyberstar place train --recipe packaged \
		--out controller/cyberstar/orchestrator/models/drl.pt

clean:
	rm -rf $(VENV) $(P4RT_VENV) .pytest_cache build *.egg-info controller/*.egg-info
