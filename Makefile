# qubes-miragevpn — every entry point a newcomer or CI needs.
# Run as root on Debian 12: `make demo`, `make test`.
#
# Two library stacks (README "Which stacks are tested"):
#   system  .venv         Debian 12's python3 (3.11) with Debian's packages: pyproject's floors
#   newest  .venv-newest  the newest Python on the machine (.ci/newest-python) with the newest
#                         releases from the package index, not seeing Debian's packages
# `make test` runs the whole suite on each of TEST_STACKS; `make test-system` / `make test-newest`
# run one.

SHELL := /bin/bash
PYTHON_SYSTEM := /usr/bin/python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done
VENV_NEWEST := .venv-newest
PY_NEWEST := $(VENV_NEWEST)/bin/python
STAMP_NEWEST := $(VENV_NEWEST)/.setup-done
# the interpreter of STACK (system or newest), for unit / interop / soak / bench-micro
STACK ?= system
PY_system := $(PY)
PY_newest := $(PY_NEWEST)
STACK_PY = $(or $(PY_$(STACK)),$(error STACK must be system or newest, not "$(STACK)"))
STACK_SETUP = $(if $(filter newest,$(STACK)),setup-newest,setup)
# the stacks `make test` (and so CI) runs
TEST_STACKS := system newest
# Debian packages: the libraries we run on (the versions Debian 12 ships, not newer wheels),
# the real OpenVPN we interoperate with, and the tools the tests drive.
APT_PACKAGES := openvpn python3-cryptography python3-openssl python3-pyroute2 python3-nftables python3-yaml \
	nftables python3-venv iproute2 iputils-ping iperf3 tcpdump procps
PYTEST_ARGS ?=
BENCH_ARGS ?=  # e.g. BENCH_ARGS="--seconds 5 --proto tcp --profile"
MICRO_ARGS ?=  # e.g. MICRO_ARGS="--seconds 3 --backend all"
FUZZ_SECONDS ?= 60
FUZZ_ARGS ?=  # e.g. FUZZ_ARGS="--seed 7 --target config"

# pytest on one stack: `run_pytest,python,stack name,marker expression`. Exit 5 ("no test
# collected") is accepted only when PYTEST_ARGS narrowed the selection (a -k that matches
# nothing on one stack); for the whole suite it stays an error.
define run_pytest
rc=0; MIRAGEVPN_STACK=$(2) $(1) -m pytest -m "$(3)" $(PYTEST_ARGS) || rc=$$?; \
$(if $(strip $(PYTEST_ARGS)),if [ $$rc -eq 5 ]; then echo "== $(2): no test matched PYTEST_ARGS"; rc=0; fi;) \
exit $$rc
endef

.PHONY: help setup setup-newest test test-system test-newest versions unit interop lint \
	lint-newest demo demo-client check-config bench bench-micro soak fuzz clean

help:
	@echo "make demo                 set up, then the sys-vpn story: a simulated Qubes VPN qube, its AppVM, a server outage"
	@echo "make demo-client          set up, then run our client against a local OpenVPN server in namespaces"
	@echo "make test                 set up, lint, then run the whole suite on both stacks (what CI runs)"
	@echo "make test-system | test-newest    the whole suite on one stack (Debian 12's | the newest)"
	@echo "make versions             the exact versions of both stacks"
	@echo "make check-config CONFIG=path.ovpn   check one OpenVPN client config"
	@echo "make unit | interop | soak | bench-micro  [STACK=newest]   one part, on one stack"
	@echo "make fuzz [FUZZ_SECONDS=60]   mutation fuzzers: config corpus, pushed options, control messages"
	@echo "make lint | bench | clean"

setup: $(STAMP)

$(STAMP): pyproject.toml
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "== installing Debian packages:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@echo "== creating $(VENV) on the system Python, seeing the Debian-packaged libraries"
	$(PYTHON_SYSTEM) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

# The newest stack: a virtual environment of its own (no --system-site-packages), the newest
# release of every dependency (pip's eager upgrade), the gateway extra (pip-nftables). Made
# again when pyproject.toml changes; `rm -r .venv-newest` picks up releases made since.
setup-newest: $(STAMP_NEWEST)

$(STAMP_NEWEST): pyproject.toml .ci/newest-python | $(STAMP)
	@newest=$$(.ci/newest-python); \
	echo "== creating $(VENV_NEWEST) on $$newest ($$($$newest -V)), isolated from Debian's packages"; \
	rm -rf $(VENV_NEWEST) && $$newest -m venv $(VENV_NEWEST)
	$(PY_NEWEST) -m pip install -q --disable-pip-version-check --upgrade --upgrade-strategy eager \
		-e '.[dev,gateway]'
	@touch $(STAMP_NEWEST)

# Every stack runs even when an earlier one failed, so one CI run reports both.
test: setup lint
	@start=$$(date +%s); failed=""; \
	for stack in $(TEST_STACKS); do \
		$(MAKE) --no-print-directory test-$$stack || failed="$$failed $$stack"; \
	done; \
	echo "== make test on stacks: $(TEST_STACKS); failed on:$${failed:- none}; $$(( $$(date +%s) - start )) s"; \
	[ -z "$$failed" ]

test-system: setup
	@echo "== the whole suite on the system stack (Debian 12's Python and packages)"
	@$(call run_pytest,$(PY),system,not slow)

test-newest: setup-newest lint-newest
	@echo "== the whole suite on the newest stack ($(VENV_NEWEST))"
	@$(call run_pytest,$(PY_NEWEST),newest,not slow)

versions: setup setup-newest
	@echo "== system stack ($(VENV))"; $(PY) -m tests.helpers.stack
	@echo "== newest stack ($(VENV_NEWEST))"; $(PY_NEWEST) -m tests.helpers.stack

unit: $(STACK_SETUP)
	@$(call run_pytest,$(STACK_PY),$(STACK),not slow and not interop and not netns)

interop: $(STACK_SETUP)
	@$(call run_pytest,$(STACK_PY),$(STACK),interop)

soak: $(STACK_SETUP)
	@$(call run_pytest,$(STACK_PY),$(STACK),slow)

lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy

# mypy again against the newest libraries' own type hints (pyOpenSSL ships them since 24)
lint-newest: setup-newest
	$(VENV_NEWEST)/bin/mypy --cache-dir .mypy_cache-newest

demo: setup
	$(PY) demo/sysvpn_demo.py

demo-client: setup
	$(PY) demo/tunnel_demo.py

check-config: setup
	@test -n "$(CONFIG)" || { echo "usage: make check-config CONFIG=path/to/client.ovpn"; exit 2; }
	$(VENV)/bin/miragevpn-config-check $(CONFIG)

bench: setup
	$(PY) bench/compare.py $(BENCH_ARGS)

# the data-channel micro-benchmark on both stacks, one row per stack, AEAD backend named
bench-micro: setup setup-newest
	@$(PY) bench/datachannel_micro.py $(MICRO_ARGS)
	@echo
	@$(PY_NEWEST) bench/datachannel_micro.py $(MICRO_ARGS)

# bounded (FUZZ_SECONDS), not part of `make test`; findings are printed and kept in .fuzz-findings/
fuzz: $(STACK_SETUP)
	$(STACK_PY) -m tests.fuzz.run --seconds $(FUZZ_SECONDS) $(FUZZ_ARGS)

clean:
	rm -rf $(VENV) $(VENV_NEWEST) .pytest_cache .mypy_cache .mypy_cache-newest .ruff_cache \
		.hypothesis .fuzz-findings build src/*.egg-info
