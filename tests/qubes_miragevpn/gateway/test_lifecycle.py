"""The daemon's decision table (gateway/lifecycle.py): phases → policies, ends → next phase."""

from __future__ import annotations

import ipaddress

import pytest

from miragevpn.config.model import DhcpOption, Transport
from miragevpn.errors import AuthenticationError, AuthFailed, ConfigError, RemoteProtocolError
from miragevpn.events import TunnelSettings
from qubes_miragevpn.gateway import lifecycle
from qubes_miragevpn.gateway.lifecycle import (
    BACKOFF_CAP,
    Dialing,
    EndKind,
    Held,
    Up,
    Waiting,
    after_end,
    backoff,
    classify_end,
    dns_warning,
    endpoint_of,
    policy_for,
    status_line,
    tunnel_of,
)
from qubes_miragevpn.gateway.policy import Blocked, Connected, Connecting, Endpoint

SERVER = ipaddress.ip_address("198.51.100.7")
ENDPOINT = Endpoint(address=SERVER, port=1194, proto="udp")


def settings(*dhcp: tuple[str, str | None], ipv6: bool = False) -> TunnelSettings:
    return TunnelSettings(
        ipv4=ipaddress.IPv4Interface("10.8.0.2/24"),
        ipv4_peer=None,
        ipv6=ipaddress.IPv6Interface("fd00:8::1000/64") if ipv6 else None,
        mtu=1500,
        routes=(),
        redirect_gateway_ipv4=False,
        redirect_gateway_ipv6=False,
        remote_address=SERVER,
        dhcp_options=tuple(DhcpOption(kind=k, value=v) for k, v in dhcp),
        cipher="AES-256-GCM",
        key_derivation="tls-ekm",
    )


# ---------------------------------------------------------------- phases → policies


def test_only_dialing_and_up_open_anything() -> None:
    tunnel = tunnel_of(settings(("DNS", "10.8.0.1")), device="tun0", endpoint=ENDPOINT)
    assert policy_for(Held(reason="x")) == Blocked()
    assert policy_for(Waiting(reason="x", retry_in=3)) == Blocked()
    assert policy_for(Dialing(endpoint=ENDPOINT)) == Connecting(endpoints=(ENDPOINT,))
    assert policy_for(Dialing(endpoint=ENDPOINT, resolve_via_uplink_dns=True)) == Connecting(
        endpoints=(ENDPOINT,), resolve_via_uplink_dns=True
    )
    assert policy_for(Up(tunnel=tunnel, summary="s")) == Connected(tunnel=tunnel)


def test_status_lines_say_blocked_until_connected() -> None:
    assert status_line(Held(reason="authentication failed: bad")).startswith("blocked: auth")
    assert "reconnecting in 4s" in status_line(Waiting(reason="server gone", retry_in=4))
    assert status_line(Waiting(reason="starting")) == "blocked: starting"
    assert status_line(Dialing(endpoint=ENDPOINT)) == (
        "connecting to 198.51.100.7 port 1194 over UDP (blocked)"
    )
    assert status_line(Up(tunnel=tunnel_of(settings(), device="t", endpoint=ENDPOINT), summary="x"))
    assert status_line(
        Up(tunnel=tunnel_of(settings(), device="t", endpoint=ENDPOINT), summary="tun0 10.8.0.2")
    ) == ("connected: tun0 10.8.0.2")


# ---------------------------------------------------------------- hook inputs


def test_endpoint_of_maps_the_transport() -> None:
    assert endpoint_of(SERVER, 443, Transport.TCP) == Endpoint(
        address=SERVER, port=443, proto="tcp"
    )
    assert endpoint_of(SERVER, 1194, Transport.UDP).proto == "udp"


def test_pushed_dns_in_order_without_duplicates_and_garbage() -> None:
    s = settings(
        ("DOMAIN", "example.test"),
        ("DNS", "10.8.0.1"),
        ("DNS6", "fd00:8::1"),
        ("DNS", "10.8.0.1"),
        ("DNS", "not-an-address"),
        ("DNS", None),
    )
    tunnel = tunnel_of(s, device="tun0", endpoint=ENDPOINT)
    assert tunnel.dns == (ipaddress.ip_address("10.8.0.1"), ipaddress.ip_address("fd00:8::1"))
    assert dns_warning(tunnel) is None


def test_configured_dns_wins_over_pushed() -> None:
    s = settings(("DNS", "10.8.0.1"))
    mine = (ipaddress.ip_address("9.9.9.9"),)
    assert tunnel_of(s, device="tun0", endpoint=ENDPOINT, configured_dns=mine).dns == mine


def test_no_dns_is_said() -> None:
    none = tunnel_of(settings(), device="tun0", endpoint=ENDPOINT)
    assert none.dns == ()
    assert "no DNS server" in (dns_warning(none) or "")
    only6 = tunnel_of(settings(("DNS6", "fd00:8::1")), device="tun0", endpoint=ENDPOINT)
    assert "only IPv6" in (dns_warning(only6) or "")


def test_tunnel_ipv6_follows_the_settings() -> None:
    assert tunnel_of(settings(ipv6=True), device="tun0", endpoint=ENDPOINT).ipv6
    assert not tunnel_of(settings(), device="tun0", endpoint=ENDPOINT).ipv6


# ---------------------------------------------------------------- session ends


@pytest.mark.parametrize(
    ("ending", "reason", "error", "by_us", "kind"),
    [
        ("closed", "stop request", None, True, EndKind.STOPPED),
        ("closed", "profile changed", None, True, EndKind.STOPPED),
        # an orderly end we did not ask for (ping-exit) is retried
        (
            "closed",
            "no packet from the server for ping-exit seconds",
            None,
            False,
            EndKind.TRANSIENT,
        ),
        (
            "failed",
            "authentication failed: bad password",
            AuthFailed("bad password"),
            False,
            EndKind.AUTH_FAILED,
        ),
        (
            "failed",
            "server halted: maintenance",
            RemoteProtocolError("server halted the session: maintenance"),
            False,
            EndKind.HALTED,
        ),
        (
            "failed",
            "bad key",
            ConfigError("unusable key", directive="key"),
            False,
            EndKind.UNUSABLE,
        ),
        (
            "failed",
            "server rejected: bad certificate",
            AuthenticationError("x"),
            False,
            EndKind.TRANSIENT,
        ),
        (
            "failed",
            "cannot connect; retries exhausted",
            RuntimeError("x"),
            False,
            EndKind.TRANSIENT,
        ),
        (
            "setup failed",
            "preparing to connect failed: nft",
            RuntimeError("nft"),
            False,
            EndKind.TRANSIENT,
        ),
        # a failure while we were closing is still a failure: not "stopped"
        (
            "failed",
            "authentication failed",
            AuthFailed(""),
            True,
            EndKind.AUTH_FAILED,
        ),
    ],
)
def test_classify_end(
    ending: str, reason: str, error: BaseException | None, by_us: bool, kind: EndKind
) -> None:
    assert classify_end(ending=ending, reason=reason, error=error, closed_by_us=by_us) is kind


def test_auth_failed_temp_is_transient() -> None:
    error = AuthFailed("try later", temporary=True)
    assert classify_end(ending="failed", reason=str(error), error=error) is EndKind.TRANSIENT


def test_no_code_in_time_holds() -> None:
    error = lifecycle.CodeNotGiven("no one-time code was given within 300s")
    kind = classify_end(ending="failed", reason=str(error), error=error)
    assert kind is EndKind.NO_CODE
    phase = after_end(kind, str(error), failures=1)
    assert phase == Held(reason="no one-time code was given within 300s")
    asking = lifecycle.Asking(text="Code", dynamic=False)
    assert policy_for(asking) == Blocked()
    assert status_line(asking).startswith("waiting for a one-time code: Code (blocked;")
    hostile = lifecycle.Asking(text="\x1b[2JCode", dynamic=False)
    assert status_line(hostile).startswith("waiting for a one-time code: \\x1b[2JCode (blocked;")


@pytest.mark.parametrize(
    "kind", [EndKind.HALTED, EndKind.AUTH_FAILED, EndKind.UNUSABLE, EndKind.NO_CODE]
)
def test_halt_auth_failed_and_unusable_profiles_hold(kind: EndKind) -> None:
    phase = after_end(kind, "why it ended", failures=1)
    assert isinstance(phase, Held)
    assert "why it ended" in phase.reason
    assert policy_for(phase) == Blocked()


def test_transient_ends_retry_with_backoff_and_stops_at_once() -> None:
    assert after_end(EndKind.TRANSIENT, "lost", failures=3) == Waiting(
        reason="session ended: lost", retry_in=4.0
    )
    assert after_end(EndKind.STOPPED, "profile changed", failures=0) == Waiting(
        reason="profile changed"
    )


def test_backoff_doubles_and_is_capped_forever() -> None:
    assert [backoff(n) for n in range(6)] == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0]
    assert backoff(6) == BACKOFF_CAP
    assert backoff(10_000) == BACKOFF_CAP  # no overflow, no end: reconnect forever
    assert all(backoff(n) <= backoff(n + 1) for n in range(100))


def test_every_phase_has_a_policy_and_a_status() -> None:
    tunnel = tunnel_of(settings(), device="tun0", endpoint=ENDPOINT)
    phases: list[lifecycle.Phase] = [
        Held(reason="r"),
        Waiting(reason="r"),
        lifecycle.Asking(text="t", dynamic=True),
        Dialing(endpoint=ENDPOINT),
        Up(tunnel=tunnel, summary="s"),
    ]
    for phase in phases:
        assert policy_for(phase) is not None
        assert status_line(phase)


def test_resolving_opens_only_the_uplink_dns() -> None:
    phase = lifecycle.Resolving(hosts=("vpn.example.test",))
    assert policy_for(phase) == Connecting(endpoints=(), resolve_via_uplink_dns=True)
    assert status_line(phase) == "resolving vpn.example.test through the uplink (blocked)"
