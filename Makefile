# cyberstar: the two commands a user needs are `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
SYSTEM_PYTHON := /usr/bin/python3

.PHONY: install host p4-tools venv p4rt-shell test demo build lint bench clean placement-model

install: host p4-tools venv p4rt-shell

host:
	bash scripts/setup-host.sh

# bmv2 and p4c from a prebuilt p4lang toolchain archive: `make install CYBERSTAR_P4_ARCHIVE=PATH`
# (a relative PATH is taken from the repository). Without it they stay optional.
p4-tools:
	bash scripts/install-p4.sh

# BCC and Mininet are Debian packages for /usr/bin/python3: the venv must see system site-packages.
venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py controller/cyberstar/p4rt/_exact_wire.c \
		controller/cyberstar/pp/_metadata.c controller/cyberstar/xdp/_slots.c \
		controller/cyberstar/xdp/_live_frames.c
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

# The pipeline tour (ref and XDP agree byte for byte), then the whole system in Mininet under
# load: a PP scale-out and a PP crash, checked from the clients' own counts, plotted.
demo: install
	$(VENV)/bin/cyberstar demo --no-lab
	$(VENV)/bin/cyberstar lab run topologies/scenarios/demo.yaml

build: venv
	$(VENV)/bin/cyberstar build

# Dead code: what vulture cannot see used is listed, with its user, in scripts/vulture_whitelist.py.
VULTURE_PATHS := controller/cyberstar tests bench topologies scripts/vulture_whitelist.py

lint: venv
	$(VENV)/bin/ruff check controller tests bench
	$(VENV)/bin/ruff format --check controller tests bench
	$(VENV)/bin/vulture $(VULTURE_PATHS) --min-confidence 60 --exclude '*_pb2*.py'

# Every script in bench/, one JSON object; `make bench BENCH_ARGS=--quick` for short runs.
bench: install
	$(PY) bench/all.py $(BENCH_ARGS)

# The packaged placement model: its recipe is controller/cyberstar/orchestrator/recipe.py.
placement-model: venv
	OMP_NUM_THREADS=1 $(VENV)/bin/cyberstar place train --recipe packaged \
		--out controller/cyberstar/orchestrator/models/drl.pt

clean:
	rm -rf $(VENV) $(P4RT_VENV) .pytest_cache build *.egg-info controller/*.egg-info
