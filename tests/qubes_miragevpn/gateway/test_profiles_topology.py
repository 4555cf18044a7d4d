"""Profiles with locked key material, for real: the daemon in the simulated Qubes topology
against a real OpenVPN 2.6 server (tests/helpers/gateway.py). The gateway cannot ask for a
passphrase, so a profile with an encrypted key and no `askpass FILE` keeps it blocked and the
status says what to add; the same key with `askpass FILE` next to the profile connects."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.helpers.gateway import UDP, built_world, probe_everything, start_server
from tests.helpers.netns import wait_until
from tests.helpers.pki import ENCRYPTED_KEY_PASSPHRASE

pytestmark = [pytest.mark.qubes, pytest.mark.netns, pytest.mark.timeout(600)]


def test_an_encrypted_key_needs_askpass_in_the_gateway(tmp_path: Path) -> None:
    profiles = {"no-askpass.ovpn": (UDP, ()), "askpass.ovpn": (UDP, ())}
    with built_world(tmp_path, profiles) as world:
        files = world.config_dir
        for name, extra in (("no-askpass.ovpn", ""), ("askpass.ovpn", "askpass askpass.txt\n")):
            path = files / name
            text = path.read_text().replace(
                f"key {world.files.client_key}\n", f"key {world.files.client_key_encrypted}\n"
            )
            assert "client-encrypted.key" in text
            path.write_text(text + extra)
            os.chmod(path, 0o600)
        vpn = start_server(world, "udp", UDP)
        world.start_daemon()
        wait_until(lambda: "askpass FILE" in world.notify.status(), 20,
                   what="the status to say the profile needs askpass")  # fmt: skip
        status = world.notify.status()
        assert status.startswith("blocked: "), status
        assert "the private key is encrypted, and the gateway cannot ask for its passphrase" in (
            status
        )
        assert "the private key is encrypted" in world.daemon_log()
        with world.topo.capture() as cap:
            time.sleep(2.0)
            assert world.fetch() is None
            probe_everything(world)
        assert "TLS: Initial packet from" not in vpn.log_text()  # it never tried
        assert cap.frames_from_sysvpn() == []
        world.set_facts(profile="askpass.ovpn")
        world.wait_through_tunnel(time.monotonic(), "encrypted key unlocked with askpass")
        assert ENCRYPTED_KEY_PASSPHRASE not in world.daemon_log()
