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
# the real OpenVPN we interoperate with, and the tools the tests drive (python3-pyroute2 is one:
# the programs speak netlink themselves, the tests check their bytes against pyroute2's). gcc, python3-dev and
# libnetfilter-queue-dev build NetfilterQueue (PyPI has its source only; extra blocked-report);
# iptables puts in the stand-in queue rule of test_blocked_queue_topology.py; python3-matplotlib
# draws bench/gateway.py's timeline; softether-vpnserver is the SoftEther server of
# tests/interop/test_softether.py (without it those tests skip).
APT_PACKAGES := openvpn python3-cryptography python3-openssl python3-pyroute2 python3-nftables python3-yaml \
	python3-lz4 python3-lzo liblzo2-dev \
	nftables python3-venv iproute2 iputils-ping iperf3 tcpdump procps \
	gcc python3-dev libnetfilter-queue-dev iptables tinyproxy dante-server \
	python3-matplotlib softether-vpnserver
# Packages whose install starts a system service the tests do not want (the tests start their own
# proxies with their own config and PID files): disabled and stopped right after we install them.
APT_SERVICES := tinyproxy:tinyproxy.service dante-server:danted.service \
	softether-vpnserver:softether-vpnserver.service
PYTEST_ARGS ?=
BENCH_ARGS ?=  # e.g. BENCH_ARGS="--seconds 5 --proto tcp --profile"
GWBENCH_ARGS ?=  # e.g. GWBENCH_ARGS="--rounds 4 --seconds 20" or "--quick"
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
	lint-newest demo demo-client check-config bench bench-gateway bench-micro soak fuzz clean

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
	@echo "make bench-gateway [STACK=newest]   sys-vpn: our gateway vs openvpn + nftables kill switch (table + timeline PNG)"
	@echo "make deb | rpm            the Debian / Fedora template packages, in build/ (README: Installing in Qubes OS)"
	@echo "make install DESTDIR=D PREFIX=/usr | uninstall   the files a template gets, without a package"

setup: $(STAMP)

$(STAMP): pyproject.toml
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "== installing Debian packages:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
		for pair in $(APT_SERVICES); do \
			case " $$(echo $$missing) " in *" $${pair%%:*} "*) \
				if [ -d /run/systemd/system ]; then systemctl disable --now $${pair#*:} || true; fi;; \
			esac; \
		done; \
	fi
	@echo "== creating $(VENV) on the system Python, seeing the Debian-packaged libraries"
	$(PYTHON_SYSTEM) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev,blocked-report]'
	@touch $(STAMP)

# The newest stack: a virtual environment of its own (no --system-site-packages), the newest
# release of every dependency (pip's eager upgrade), the gateway extra (pip-nftables), the
# blocked-report extra, the compression extra (lz4, python-lzo: built against liblzo2-dev from
# APT_PACKAGES). Made again when pyproject.toml changes; `rm -r .venv-newest` picks up releases
# made since.
setup-newest: $(STAMP_NEWEST)

$(STAMP_NEWEST): pyproject.toml .ci/newest-python | $(STAMP)
	@newest=$$(.ci/newest-python); \
	echo "== creating $(VENV_NEWEST) on $$newest ($$($$newest -V)), isolated from Debian's packages"; \
	rm -rf $(VENV_NEWEST) && $$newest -m venv $(VENV_NEWEST)
	$(PY_NEWEST) -m pip install -q --disable-pip-version-check --upgrade --upgrade-strategy eager \
		-e '.[dev,gateway,blocked-report,compression,bench]'
	@touch $(STAMP_NEWEST)

# Both stacks run at once (the suite mostly waits on real servers, timeouts and namespaces, so
# two runs share the 2 cores well): the system stack prints as it goes, the newest stack's output
# is kept in build/test-newest.log and printed after. Both always run, so one CI run reports both.
# The few fixtures that are one per machine (the real QubesDB daemons, the installed .deb) hold a
# lock file while they run. `make test TEST_PARALLEL=0` runs the stacks one after the other.
TEST_PARALLEL ?= 1
test: setup setup-newest lint
	@start=$$(date +%s); failed=""; \
	if [ "$(TEST_PARALLEL)" = 1 ]; then \
		mkdir -p build; log=build/test-newest.log; \
		echo "== the newest stack runs beside the system stack; its output follows the system's"; \
		( $(MAKE) --no-print-directory test-newest > $$log 2>&1 ) & newest=$$!; \
		$(MAKE) --no-print-directory test-system || failed="$$failed system"; \
		wait $$newest || failed="$$failed newest"; \
		echo "== output of the newest stack ($$log)"; cat $$log; \
	else \
		for stack in $(TEST_STACKS); do \
			$(MAKE) --no-print-directory test-$$stack || failed="$$failed $$stack"; \
		done; \
	fi; \
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
	@$(call run_pytest,$(STACK_PY),$(STACK),not slow and not interop and not netns and not packaging)

interop: $(STACK_SETUP)
	@$(call run_pytest,$(STACK_PY),$(STACK),interop)

soak: $(STACK_SETUP)
	@$(call run_pytest,$(STACK_PY),$(STACK),slow)

lint: setup
	$(VENV)/bin/ruff check src tests bench tools
	$(VENV)/bin/ruff format --check src tests bench tools
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

# the Qubes gateway side by side with the openvpn client behind an nftables kill switch, in the
# simulated topology: throughput, packet rate, recovery after faults, peak RSS, the timeline PNG
bench-gateway: $(STACK_SETUP)
	$(STACK_PY) bench/gateway.py $(GWBENCH_ARGS)

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

# ------------------------------------------------------------------ install and packages
# `make install DESTDIR=/tmp/root PREFIX=/usr` lays out what a Qubes template gets (the Debian
# and Fedora packages run the same rules): the Python packages and console scripts (a wheel
# built from this tree, installed into the distribution's own site folder by
# tools/install_wheel.py), the systemd units and preset, the Qubes post-install hook, the
# qrexec service, the docs and the example settings. `make uninstall` with the same variables
# removes exactly that; without DESTDIR it also removes our nftables table from the running
# system (a live install leaves no rules behind).
PREFIX ?= /usr
DESTDIR ?=
BINDIR ?= $(PREFIX)/bin
SYSCONFDIR ?= /etc
UNITDIR ?= $(PREFIX)/lib/systemd/system
PRESETDIR ?= $(PREFIX)/lib/systemd/system-preset
DOCDIR ?= $(PREFIX)/share/doc/qubes-miragevpn
QUBES_RPC_DIR ?= $(SYSCONFDIR)/qubes-rpc
QUBES_POSTINSTALL_DIR ?= $(SYSCONFDIR)/qubes/post-install.d
# the Python that runs the installed program (#! of the console scripts) and builds the wheel
INSTALL_PYTHON ?= $(PYTHON_SYSTEM)
# empty: the distribution's own site folder (Debian /usr/lib/python3/dist-packages, Fedora
# /usr/lib/python3.X/site-packages); the rpm spec passes %{python3_sitelib}
PYTHON_SITELIB ?=
WHEEL_DIR := build/wheel
VERSION := $(shell cat version)
NFT_TABLE := inet qubes-miragevpn
INSTALL_WHEEL = $(INSTALL_PYTHON) tools/install_wheel.py --destdir "$(DESTDIR)" --prefix "$(PREFIX)" \
	$(if $(PYTHON_SITELIB),--sitelib "$(PYTHON_SITELIB)")
UNITS := qubes-miragevpn-block.service qubes-miragevpn.service
PRESET := 75-qubes-miragevpn.preset
POSTINSTALL_HOOK := 30-qubes-miragevpn.sh
QREXEC_SERVICES := qubes.MirageVPNStatus
DATA_FILES := $(addprefix $(UNITDIR)/,$(UNITS)) $(PRESETDIR)/$(PRESET) \
	$(QUBES_POSTINSTALL_DIR)/$(POSTINSTALL_HOOK) $(addprefix $(QUBES_RPC_DIR)/,$(QREXEC_SERVICES)) \
	$(DOCDIR)/README.md $(DOCDIR)/security.md $(DOCDIR)/examples/settings.yaml

.PHONY: install install-python install-data uninstall deb rpm packages-check

install: install-python install-data

install-python:
	rm -rf $(WHEEL_DIR) && mkdir -p $(WHEEL_DIR)
	$(INSTALL_PYTHON) -m build --wheel --no-isolation --outdir $(WHEEL_DIR) . >$(WHEEL_DIR).log 2>&1 \
		|| { cat $(WHEEL_DIR).log; exit 1; }
	$(INSTALL_WHEEL) install --interpreter $(INSTALL_PYTHON) $(WHEEL_DIR)/qubes_miragevpn-$(VERSION)-py3-none-any.whl

install-data:
	install -d $(DESTDIR)$(UNITDIR) $(DESTDIR)$(PRESETDIR) $(DESTDIR)$(QUBES_POSTINSTALL_DIR) \
		$(DESTDIR)$(QUBES_RPC_DIR) $(DESTDIR)$(DOCDIR)/examples
	install -m 0644 $(addprefix qubes-miragevpn/systemd/,$(UNITS)) $(DESTDIR)$(UNITDIR)/
	install -m 0644 qubes-miragevpn/systemd/$(PRESET) $(DESTDIR)$(PRESETDIR)/
	install -m 0755 qubes-miragevpn/post-install.d/$(POSTINSTALL_HOOK) $(DESTDIR)$(QUBES_POSTINSTALL_DIR)/
	install -m 0755 $(addprefix qubes-miragevpn/qubes-rpc/,$(QREXEC_SERVICES)) $(DESTDIR)$(QUBES_RPC_DIR)/
	install -m 0644 qubes-miragevpn/README.md docs/security.md $(DESTDIR)$(DOCDIR)/
	install -m 0644 qubes-miragevpn/settings.yaml.example $(DESTDIR)$(DOCDIR)/examples/settings.yaml

uninstall:
	@if [ -z "$(DESTDIR)" ]; then \
		if [ -d /run/systemd/system ]; then systemctl disable --now $(UNITS) || true; fi; \
		if nft list table $(NFT_TABLE) >/dev/null 2>&1; then \
			echo "nft delete table $(NFT_TABLE)"; nft delete table $(NFT_TABLE); fi; \
	fi
	rm -f $(addprefix $(DESTDIR),$(DATA_FILES))
	-rmdir $(DESTDIR)$(DOCDIR)/examples $(DESTDIR)$(DOCDIR) 2>/dev/null
	$(INSTALL_WHEEL) uninstall

# The packages, built from the files git knows in this tree (committed or not, never ignored
# ones) copied into build/: build/deb/*.deb (with the source package beside it) and
# build/rpm/RPMS/noarch/*.rpm. Their build tools come from Debian (the rpm package provides
# rpmbuild; rpm_spec/macros.debian stands in for Fedora's systemd and Python macros there, and
# --nodeps skips the BuildRequires check, as Debian's rpm database knows no packages).
# the distribution's tools only (not a python3 from another PATH entry, e.g. pyenv's)
SYSTEM_PATH := /usr/sbin:/usr/bin:/sbin:/bin
DEB_BUILD_PACKAGES := debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools \
	python3-build python3-installer fakeroot lintian
RPM_BUILD_PACKAGES := rpm python3-rpm python3-build python3-installer python3-wheel python3-setuptools
define apt_ensure
@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
if [ -n "$$missing" ]; then \
	echo "== installing Debian packages:" $$missing; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends $$missing >/dev/null; \
fi
endef
define export_tree
rm -rf $(1) && mkdir -p $(1) && git ls-files -z --cached --others --exclude-standard \
	| xargs -0 -I{} sh -c 'test -e "{}" && printf "%s\0" "{}"' | tar --null -T - -cf - | tar -xf - -C $(1)
endef

deb:
	$(call apt_ensure,$(DEB_BUILD_PACKAGES))
	$(call export_tree,build/deb/qubes-miragevpn-$(VERSION))
	cd build/deb/qubes-miragevpn-$(VERSION) && env PATH=$(SYSTEM_PATH) dpkg-buildpackage -us -uc --build=full >../build.log 2>&1 \
		|| { tail -50 ../build.log; exit 1; }
	@ls build/deb/*.deb build/deb/*.dsc

rpm:
	$(call apt_ensure,$(RPM_BUILD_PACKAGES))
	$(call export_tree,build/rpm/SOURCES/qubes-miragevpn-$(VERSION))
	sed 's/@VERSION@/$(VERSION)/g; s/@CHANGELOG@/* Fri Dec 04 2026 qubes-miragevpn developers <qubes-miragevpn@lists.example.org> - $(VERSION)-1\n- First package/' \
		rpm_spec/qubes-miragevpn.spec.in >build/rpm/qubes-miragevpn.spec
	tar -C build/rpm/SOURCES -czf build/rpm/SOURCES/qubes-miragevpn-$(VERSION).tar.gz qubes-miragevpn-$(VERSION)
	rm -rf build/rpm/SOURCES/qubes-miragevpn-$(VERSION)
	env PATH=$(SYSTEM_PATH) rpmbuild --define "_topdir $(CURDIR)/build/rpm" \
		$$(rpm --eval "%{?systemd_post:fedora}" | grep -q fedora || echo --load rpm_spec/macros.debian) \
		$$(rpm -q rpm >/dev/null 2>&1 || echo --nodeps) -ba build/rpm/qubes-miragevpn.spec >build/rpm/build.log 2>&1 || { tail -50 build/rpm/build.log; exit 1; }
	@ls build/rpm/RPMS/noarch/*.rpm build/rpm/SRPMS/*.rpm
