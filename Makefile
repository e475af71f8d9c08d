# pdmv2-lab — run as root on Debian 12.  `make help` lists the targets.
#
# Everything runs in .venv, made with Debian's /usr/bin/python3 and --system-site-packages so that
# Debian's Mininet (apt) is importable beside the pinned PyPI packages.

SHELL      := /bin/bash
PYTHON_SYS ?= /usr/bin/python3
VENV       ?= .venv
BIN        := $(VENV)/bin
PY         := $(BIN)/python
STAMP      := $(VENV)/.deps-installed
APT_PKGS   := python3-venv python3-dev gcc libssl-dev mininet bridge-utils net-tools iproute2 iptables tcpdump tshark iperf3 \
              libnetfilter-queue-dev openssh-server openssh-client iputils-ping curl \
              chromium chromium-driver
PYTEST_ARGS ?=

TOPO       ?= enterprise
HOST       ?= sc1
SECONDARIES ?=
LAB        := $(PY) -m lab

.PHONY: help deps test test-unit lint bench demo demo-core lab-up lab-down lab-status lab-shell lab-web clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

deps: $(STAMP) ## install Debian packages (apt) and the pinned Python packages (.venv)

$(STAMP): pyproject.toml requirements.lock setup.py pdmv2/native/_datapath.c
	@if [ "$$(id -u)" != 0 ]; then echo "make deps: run as root (apt-get install, namespaces)"; exit 1; fi
	@missing=$$(for p in $(APT_PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo ">> apt-get install $$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null || exit 1; \
	fi
	@test -x $(PY) || { echo ">> creating $(VENV) with $(PYTHON_SYS)"; $(PYTHON_SYS) -m venv --system-site-packages $(VENV); }
	@echo ">> pip install (pinned, see requirements.lock)"
	@$(PY) -m pip install -q --disable-pip-version-check -c requirements.lock -e '.[test]'
	@touch $(STAMP)

test: deps ## run every test (unit, vectors, property; e2e ones need root)
	$(PY) -m pytest tests $(PYTEST_ARGS)

test-unit: deps ## the tests that need neither root nor namespaces
	$(PY) -m pytest tests -m "not e2e" $(PYTEST_ARGS)

lint: deps ## ruff and mypy
	$(BIN)/ruff check pdmv2 lab tests bench
	$(BIN)/ruff format --check pdmv2 lab tests bench
	$(BIN)/mypy
	cd roles && ../$(BIN)/ansible-lint pdmv2_keys pdmv2_agent ../playbooks/site.yml

bench: deps ## benchmarks: core, registration on loopback, agent in namespaces (bench/*.json, results.md)
	$(PY) bench/core_bench.py --json bench/core.json
	$(PY) bench/registration_bench.py --json bench/registration.json
	$(PY) bench/native_bench.py --json bench/native.json
	$(PY) bench/agent_bench.py --out bench/agent.json
	$(PY) bench/accuracy_bench.py --out bench/accuracy.json
	$(PY) bench/security_bench.py --json bench/security.json --results bench/results.md

demo: deps ## the teaching walkthrough on the default lab topology (up, traffic, observer, forgery, plot, down)
	$(LAB) demo

demo-core: deps ## the protocol walked through in one process, no lab
	$(PY) -m pdmv2.demo

lab-up: deps ## build and start the lab: make lab-up [TOPO=enterprise|minimal|two-orgs] [SECONDARIES=N]
	$(LAB) up --topo $(TOPO) $(if $(SECONDARIES),--secondaries $(SECONDARIES))

lab-down: ## remove everything the lab made (also after a crash)
	@if [ -x $(PY) ]; then $(LAB) down; else echo "no .venv: nothing of a lab can be running"; fi

lab-status: ## hosts, roles, addresses, agent status, the Ansible push's progress
	@if [ -x $(PY) ]; then $(LAB) status; else echo "no lab is up"; fi

lab-shell: ## a shell in a lab host: make lab-shell HOST=sc1
	$(LAB) shell $(HOST)

lab-web: deps ## live read-only web view of the running lab on loopback: make lab-web [PORT=8470]
	$(LAB) web $(if $(PORT),--port $(PORT))

clean: ## remove the venv and caches (never touches the system)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
