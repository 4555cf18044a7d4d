# qubes-miragevpn — every entry point a newcomer or CI needs.
# Run as root on Debian 12: `make demo`, `make test`.

SHELL := /bin/bash
PYTHON_SYSTEM := /usr/bin/python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done
# Debian packages: the libraries we run on (the versions Debian 12 ships, not newer wheels),
# the real OpenVPN we interoperate with, and the tools the tests drive.
APT_PACKAGES := openvpn python3-cryptography python3-openssl python3-pyroute2 python3-nftables python3-yaml \
	nftables python3-venv iproute2 iputils-ping iperf3 tcpdump procps
PYTEST_ARGS ?=
BENCH_ARGS ?=  # e.g. BENCH_ARGS="--seconds 5 --proto tcp --profile"

.PHONY: help setup test unit interop lint demo check-config bench soak clean

help:
	@echo "make demo                 set up, then run our client against a local OpenVPN server in namespaces"
	@echo "make test                 set up, then lint and run the whole suite (what CI runs)"
	@echo "make check-config CONFIG=path.ovpn   check one OpenVPN client config"
	@echo "make unit | interop | lint | bench | soak | clean"

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

test: setup lint
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

unit: setup
	$(PY) -m pytest -m "not slow and not interop and not netns" $(PYTEST_ARGS)

interop: setup
	$(PY) -m pytest -m "interop" $(PYTEST_ARGS)

soak: setup
	$(PY) -m pytest -m "slow" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests
	$(VENV)/bin/mypy

demo: setup
	$(PY) demo/tunnel_demo.py

check-config: setup
	@test -n "$(CONFIG)" || { echo "usage: make check-config CONFIG=path/to/client.ovpn"; exit 2; }
	$(VENV)/bin/miragevpn-config-check $(CONFIG)

bench: setup
	$(PY) bench/compare.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis build src/*.egg-info
