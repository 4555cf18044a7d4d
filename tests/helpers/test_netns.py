"""The namespace helpers: isolation, veth connectivity, cleanup by PID even on failure."""

from __future__ import annotations

import subprocess

import pytest

from tests.helpers.netns import Netns, netns_pair_context, wait_until

pytestmark = pytest.mark.netns


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def test_pair_can_ping_and_is_removed() -> None:
    with netns_pair_context(client_default_route=True) as pair:
        names = {pair.server.name, pair.client.name}
        assert names <= _namespaces()
        pair.client.run(["ping", "-c", "1", "-W", "2", str(pair.server_address)])
        routes = pair.client.json(["ip", "-j", "route", "show", "default"])
        assert routes[0]["gateway"] == str(pair.server_address)
    assert not names & _namespaces()


def test_cleanup_kills_spawned_processes_on_failure() -> None:
    procs: list[subprocess.Popen[bytes]] = []
    with pytest.raises(RuntimeError), Netns.create("t") as ns:
        procs.append(ns.spawn(["sleep", "60"]))
        # a grandchild we did not spawn ourselves, still inside the namespace
        ns.spawn(["sh", "-c", "sleep 60 & wait"])
        wait_until(lambda: len(ns.pids()) >= 3, 5, what="three processes in the namespace")
        raise RuntimeError("test failed")
    assert procs[0].returncode is not None
    assert ns.name not in _namespaces()


def test_wait_until_is_bounded() -> None:
    with pytest.raises(TimeoutError, match="never"):
        wait_until(lambda: False, 0.2, what="never")
    assert wait_until(lambda: 42, 1) == 42
