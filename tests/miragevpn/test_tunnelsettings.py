"""tunnelsettings.py: configuration + PUSH_REPLY → the TunnelSettings the runtime applies."""

from __future__ import annotations

import ipaddress

from miragevpn.config.model import Config, IfConfig, Route, RouteGatewayKeyword, Topology
from miragevpn.events import RouteSpec, TunnelSettings
from miragevpn.push import PushedOptions, parse_pushed_options
from miragevpn.tunnelsettings import resolve_tunnel_settings

SERVER = ipaddress.IPv4Address("198.51.100.1")
CONFIG = Config(client=True)


def resolve(push: list[str], config: Config = CONFIG) -> tuple[TunnelSettings, tuple[str, ...]]:
    return resolve_tunnel_settings(
        config,
        parse_pushed_options(push, config),
        remote_address=SERVER,
        cipher="AES-256-GCM",
        key_derivation="tls-ekm",
    )


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


def addr(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def test_subnet_topology_reads_a_netmask_and_routes_use_route_gateway() -> None:
    settings, notes = resolve(
        [
            "topology subnet",
            "ifconfig 10.8.0.2 255.255.255.0",
            "route-gateway 10.8.0.1",
            "route 192.168.100.0 255.255.255.0",
            "route 192.168.200.0 255.255.255.0 10.8.0.9 7",
        ]
    )
    assert notes == ()
    assert str(settings.ipv4) == "10.8.0.2/24" and settings.ipv4_peer is None
    assert settings.routes == (
        RouteSpec(network=net("192.168.100.0/24"), gateway=addr("10.8.0.1")),
        RouteSpec(network=net("192.168.200.0/24"), gateway=addr("10.8.0.9"), metric=7),
    )
    assert (settings.remote_address, settings.cipher, settings.key_derivation) == (
        SERVER,
        "AES-256-GCM",
        "tls-ekm",
    )


def test_net30_reads_a_peer_which_is_also_the_route_gateway() -> None:
    settings, _ = resolve(["ifconfig 10.8.0.6 10.8.0.5", "route 10.9.0.0 255.255.0.0"])
    assert str(settings.ipv4) == "10.8.0.6/32" and settings.ipv4_peer == addr("10.8.0.5")
    assert settings.routes == (RouteSpec(network=net("10.9.0.0/16"), gateway=addr("10.8.0.5")),)


def test_a_subnet_ifconfig_whose_mask_is_no_netmask_is_refused_with_a_note() -> None:
    pushed = PushedOptions(
        topology=Topology.SUBNET,
        ifconfig=IfConfig(addr("10.8.0.2"), addr("255.0.255.0")),  # type: ignore[arg-type]
    )
    settings, notes = resolve_tunnel_settings(
        CONFIG, pushed, remote_address=SERVER, cipher="AES-256-GCM", key_derivation="tls-ekm"
    )
    assert settings.ipv4 is None  # issue 8, finding 2: no guessed prefix for a hostile mask
    assert notes == ("ifconfig 10.8.0.2 255.0.255.0 refused: 255.0.255.0 is not a netmask",)


def test_routes_the_runtime_must_resolve_are_left_out_with_a_note() -> None:
    config = Config(
        client=True,
        routes=(
            Route(net("172.16.0.0/12"), RouteGatewayKeyword.NET_GATEWAY),  # type: ignore[arg-type]
            Route(net("172.20.0.0/16"), RouteGatewayKeyword.VPN_GATEWAY),  # type: ignore[arg-type]
        ),
    )
    settings, notes = resolve(["topology subnet", "ifconfig 10.8.0.2 255.255.255.0"], config)
    assert notes == ("route 172.16.0.0/12 via net_gateway is left to the system",)
    # vpn_gateway without route-gateway in subnet topology: on-link through the tun device
    assert settings.routes == (RouteSpec(network=net("172.20.0.0/16"), gateway=None),)


def test_pushed_values_override_configured_ones_and_lists_add_up() -> None:
    config = Config(
        client=True,
        tun_mtu=1400,
        routes=(Route(net("10.50.0.0/16")),),  # type: ignore[arg-type]
    )
    settings, _ = resolve(["tun-mtu 1380", "route 10.60.0.0 255.255.0.0"], config)
    assert settings.mtu == 1380
    assert [r.network for r in settings.routes] == [net("10.50.0.0/16"), net("10.60.0.0/16")]
    assert resolve([], config)[0].mtu == 1400
    assert resolve([], config)[0].ipv4 is None  # no ifconfig anywhere: no IPv4 address


def test_ipv6_routes_default_to_the_pushed_ipv6_peer() -> None:
    settings, _ = resolve(
        [
            "ifconfig-ipv6 2001:db8::2/64 2001:db8::1",
            "route-ipv6 2001:db8:1::/48",
            "route-ipv6 2001:db8:2::/48 2001:db8::7",
        ]
    )
    assert str(settings.ipv6) == "2001:db8::2/64"
    assert settings.routes == (
        RouteSpec(network=net("2001:db8:1::/48"), gateway=addr("2001:db8::1")),
        RouteSpec(network=net("2001:db8:2::/48"), gateway=addr("2001:db8::7")),
    )


def test_redirect_gateway_flags_choose_the_families() -> None:
    plain, _ = resolve([])
    assert (plain.redirect_gateway_ipv4, plain.redirect_gateway_ipv6) == (False, False)
    v4, _ = resolve(["redirect-gateway def1"])
    assert (v4.redirect_gateway_ipv4, v4.redirect_gateway_ipv6) == (True, False)
    v6, _ = resolve(["redirect-gateway def1 ipv6 !ipv4"])
    assert (v6.redirect_gateway_ipv4, v6.redirect_gateway_ipv6) == (False, True)


def test_block_ipv6_answers_from_the_ipv6_peer_or_fe80_7() -> None:
    """forward.c ipv6_send_icmp_unreachable: the ifconfig-ipv6 remote, else fe80::7; pushed
    (OPT_P_ROUTE) or configured alike; not set, IPv6 goes through."""
    plain, _ = resolve(["ifconfig-ipv6 2001:db8::2/64 2001:db8::1"])
    assert plain.block_ipv6_source is None
    pushed, _ = resolve(["ifconfig-ipv6 2001:db8::2/64 2001:db8::1", "block-ipv6"])
    assert pushed.block_ipv6_source == addr("2001:db8::1")
    configured, _ = resolve([], Config(client=True, block_ipv6=True))
    assert configured.block_ipv6_source == addr("fe80::7")
    nopull, _ = resolve(["block-ipv6"], Config(client=True, route_nopull=True))
    assert nopull.block_ipv6_source is None  # route-nopull drops OPT_P_ROUTE options


def test_pushed_dhcp_options_are_kept_in_order() -> None:
    settings, _ = resolve(["dhcp-option DNS 10.8.0.1", "dhcp-option DOMAIN vpn.example"])
    assert [(o.kind, o.value) for o in settings.dhcp_options] == [
        ("DNS", "10.8.0.1"),
        ("DOMAIN", "vpn.example"),
    ]
