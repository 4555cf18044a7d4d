"""A one-time code through the gateway, in the simulated Qubes topology with a real OpenVPN 2.6
server: the server's verify script refuses carol's password with a dynamic challenge (CRV1 in
`auth_failed_reason_file`); the daemon stays blocked, says what it waits for (status, a
desktop notice), leaks nothing while waiting, and `qubes-miragevpn answer` (the code on
standard input) lets it reconnect with `CRV1::state::code` and bring the tunnel up."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from tests.helpers.gateway import UDP, World, assert_no_leaks, built_world, busy, start_server
from tests.helpers.netns import wait_until
from tests.helpers.password_auth import calls, verify_script_lines

pytestmark = [pytest.mark.qubes, pytest.mark.netns, pytest.mark.timeout(600)]

PASSWORD = "correct horse:battery"
CODE = "271828"
STATE = "st-8Xq2"
QUESTION = "Enter the code sent to your phone"
STATIC_QUESTION = "Enter Authenticator Code"
VERIFY = """#!/bin/sh
user=$(sed -n 1p "$1")
pass=$(sed -n 2p "$1")
field() {{ printf '%s' "$pass" | cut -d: -f"$1" | base64 -d; }}
case "$pass" in
SCRV1:*)
    if [ "$user" = alice ] && [ "$(field 2)" = "{password}" ] && [ "$(field 3)" = "{code}" ]; then
        echo "$user static-ok" >> {dir}/calls
        exit 0
    fi;;
esac
if [ "$user" = carol@corp ] && [ "$pass" = "CRV1::{state}::{code}" ]; then
    echo "$user dynamic-ok" >> {dir}/calls
    exit 0
fi
if [ "$user" = carol ] && [ "$pass" = "{password}" ]; then
    echo "$user plain" >> {dir}/calls
    reason="CRV1:R:{state}:$(printf carol@corp | base64):{question}"
else
    echo "$user refused" >> {dir}/calls
    reason="wrong credentials"
fi
printf '%s' "$reason" > "$auth_failed_reason_file"
echo 0 > "$auth_control_file"
exit 2
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """otp.ovpn authenticates with carol's password (inline), static.ovpn with alice's and a
    static-challenge; a stand-in notify-send records the desktop notices for /default-user
    root in `world.tmp / "notices"`."""
    tmp = tmp_path_factory.mktemp("challenge")
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    notify = bin_dir / "notify-send"
    notify.write_text(f'#!/bin/sh\nline=$(printf "%s|" "$@")\necho "$line" >> {tmp / "notices"}\n')
    notify.chmod(0o755)
    dynamic = ("<auth-user-pass>", "carol", PASSWORD, "</auth-user-pass>")
    static = ("<auth-user-pass>", "alice", PASSWORD, "</auth-user-pass>",
              f'static-challenge "{STATIC_QUESTION}" 0')  # fmt: skip
    profiles = {"otp.ovpn": (UDP, dynamic), "static.ovpn": (UDP, static)}
    with pytest.MonkeyPatch.context() as mp, built_world(tmp, profiles) as world:
        mp.setenv("PATH", f"{bin_dir}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/bin')}")
        with world.facts_path.open("a") as facts:
            facts.write("/default-user: root\n")
        yield world


def status(world: World) -> dict[str, Any]:
    done = world.control("status", "--json")
    answer: dict[str, Any] = json.loads(done.stdout) if done.returncode == 0 else {}
    return answer


def test_the_gateway_waits_blocked_for_the_code_and_answer_supplies_it(world: World) -> None:
    script = VERIFY.format(
        dir=world.tmp, password=PASSWORD, code=CODE, state=STATE, question=QUESTION
    )
    scenario = replace(
        UDP, extra_server=(*UDP.extra_server, *verify_script_lines(world.tmp, script))
    )
    start_server(world, "udp", scenario)
    world.start_daemon()  # Blocked first (at boot the block unit has done it already)
    wait_until(lambda: status(world).get("one_time_code"), 60, interval=0.2,
               what="the daemon to ask for the code")  # fmt: skip
    with world.topo.capture() as cap, busy(world) as outcomes:
        s = status(world)
        assert s["state"] == "blocked" and s["held"] is False, s
        assert s["why"].startswith(f"waiting for a one-time code: {QUESTION}"), s
        assert s["one_time_code"]["text"] == QUESTION and s["one_time_code"]["dynamic"], s
        assert 0 < s["one_time_code"]["seconds_left"] <= 300, s
        assert "one-time code wanted" in world.control("status").stdout
        assert calls(world.tmp) == ["carol plain"]
        time.sleep(3)  # waiting: appvm2 keeps trying, nothing may get out
        assert world.fetch() is None
        assert status(world)["state"] == "blocked"
        asked_at = len(outcomes)
        argv = [*world.qubes_miragevpn("answer"), "--control-dir", str(world.control_dir)]
        answered = time.monotonic()
        done = subprocess.run(argv, input=CODE + "\n", capture_output=True, text=True,
                              timeout=30, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
        world.wait_through_tunnel(answered, "after the one-time code")
    assert asked_at > 0  # the background traffic ran while the daemon waited
    assert_no_leaks(world, cap, "waiting for a one-time code, then connecting")
    assert calls(world.tmp) == ["carol plain", "carol@corp dynamic-ok"]
    s = status(world)
    assert s["state"] == "connected" and s["one_time_code"] is None, s
    late = world.control("answer", "123")
    assert late.returncode == 1 and "no one-time code is asked" in late.stderr
    log = world.daemon_log()
    assert QUESTION in log and "one-time code received" in log
    assert CODE not in log and PASSWORD not in log and STATE not in log  # secrets never logged
    notices = (world.tmp / "notices").read_text()
    assert "VPN needs a one-time code" in notices and "qubes-miragevpn answer CODE" in notices


def test_a_static_challenge_is_asked_before_the_gateway_connects(world: World) -> None:
    """After the first test: the server runs, the tunnel is up with otp.ovpn."""
    with world.topo.capture() as cap:
        done = world.control("profile", "static.ovpn")
        assert done.returncode == 0, done.stderr
        wait_until(lambda: (status(world).get("one_time_code") or {}).get("text"), 30,
                   interval=0.2, what="the daemon to ask for the static code")  # fmt: skip
        asked = status(world)["one_time_code"]
        assert asked["text"] == STATIC_QUESTION and asked["dynamic"] is False, asked
        before = len(calls(world.tmp))
        time.sleep(2)
        assert world.fetch() is None
    # asked before connecting: no new login reached the server while the question was open,
    # and nothing left sys-vpn outside the session (the old one's goodbye is allowed)
    assert len(calls(world.tmp)) == before
    assert_no_leaks(world, cap, "switching to a static-challenge profile")
    answered = time.monotonic()
    done = world.control("answer", CODE)
    assert done.returncode == 0, done.stderr
    world.wait_through_tunnel(answered, "after the static code")
    assert calls(world.tmp)[-1] == "alice static-ok"
    assert CODE not in world.daemon_log()
