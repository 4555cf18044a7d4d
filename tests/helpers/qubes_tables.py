"""Qubes' own nftables tables in sys-vpn, as the qube's scripts leave them (test fixture text:
network/qubes-ipv4.nft, qubes-ipv6.nft, qubes-antispoof.nft, qubes-setup-dnat-to-ns and
vif-route-qubes; see shared/reference/qubes-integration.md section 2.3)."""

from __future__ import annotations

import ipaddress

A4 = ipaddress.IPv4Address
A6 = ipaddress.IPv6Address


def qubes_tables(vifs: list[tuple[str, A4, A6]], dnat_dns: tuple[A4, ...]) -> str:
    """Qubes' own tables as network/qubes-ipv4.nft, qubes-ipv6.nft, qubes-antispoof.nft,
    qubes-setup-dnat-to-ns and vif-route-qubes leave them (test fixture text, not our code)."""
    allowed4 = ", ".join(f'"{v}" . {a}' for v, a, _ in vifs)
    allowed6 = ", ".join(f'"{v}" . {a}' for v, _, a in vifs)
    down4 = ", ".join(str(a) for _, a, _ in vifs)
    down6 = ", ".join(str(a) for _, _, a in vifs)
    dnat = "\n".join(
        f"      ip daddr {d} {p} dport 53 dnat to {d}" for d in dnat_dns for p in ("udp", "tcp")
    )
    return f"""
table ip qubes {{
   set downstream {{ type ipv4_addr; elements = {{ {down4} }} }}
   set allowed {{ type ifname . ipv4_addr; elements = {{ {allowed4} }} }}
   chain prerouting {{
      type filter hook prerouting priority raw; policy accept;
      iifgroup 2 goto antispoof
      ip saddr @downstream counter drop
   }}
   chain antispoof {{ iifname . ip saddr @allowed accept; counter drop; }}
   chain postrouting {{
      type nat hook postrouting priority srcnat; policy accept;
      oifgroup 2 accept
      oif lo accept
      masquerade
   }}
   chain input {{
      type filter hook input priority filter; policy drop;
      jump custom-input
      ct state invalid counter drop
      iifgroup 2 meta l4proto udp udp dport 68 counter drop
      ct state related,established accept
      iifgroup 2 meta l4proto icmp accept
      iif lo accept
      iifgroup 2 counter reject with icmp type host-prohibited
      counter
   }}
   chain forward {{
      type filter hook forward priority filter; policy accept;
      jump custom-forward
      ct state invalid counter drop
      ct state related,established accept
      iifgroup != 2 counter drop
      oifgroup 2 counter drop
   }}
   chain custom-input {{}}
   chain custom-forward {{}}
   chain dnat-dns {{
      type nat hook prerouting priority dstnat; policy accept;
{dnat}
   }}
}}
table ip6 qubes {{
   set downstream {{ type ipv6_addr; elements = {{ {down6} }} }}
   set allowed {{ type ifname . ipv6_addr; elements = {{ {allowed6} }} }}
   chain prerouting {{
      type filter hook prerouting priority raw; policy accept;
      iifgroup 2 ip6 saddr fe80::/10 accept
      iifgroup 2 goto antispoof
      ip6 saddr @downstream counter drop
   }}
   chain antispoof {{ iifname . ip6 saddr @allowed accept; counter drop; }}
   chain postrouting {{
      type nat hook postrouting priority srcnat; policy accept;
      oifgroup 2 accept
      oif lo accept
      masquerade
   }}
   chain input {{
      type filter hook input priority filter; policy drop;
      jump custom-input
      ct state invalid counter drop
      ct state related,established accept
      meta l4proto icmpv6 accept
      iif lo accept
      iifgroup 2 counter reject with icmpv6 type admin-prohibited
      counter
   }}
   chain forward {{
      type filter hook forward priority filter; policy accept;
      jump custom-forward
      ct state invalid counter drop
      ct state related,established accept
      iifgroup != 2 counter drop
      oifgroup 2 counter drop
   }}
   chain custom-input {{}}
   chain custom-forward {{}}
}}
"""


def nat_accel_table(devices: list[str], *, flowtable: bool) -> str:
    """vif-route-qubes' `inet qubes-nat-accel`: group 2 -> group 1 TCP/UDP flows offloaded at
    filter+5. Kernels without flowtables (CONFIG_NF_FLOW_TABLE unset) get the same chain with a
    counter in place of `flow add`: a packet counted there is one a flowtable would offload."""
    names = ", ".join(f'"{d}"' for d in devices)
    table = "table inet qubes-nat-accel {\n"
    if flowtable:
        hook = "hook ingress priority filter"
        table += f"   flowtable qubes-accel {{ {hook}; devices = {{ {names} }}; }}\n"
    offload = "flow add @qubes-accel" if flowtable else "counter"
    return (
        table
        + f"""   chain qubes-accel {{
      type filter hook forward priority filter + 5; policy accept;
      meta l4proto {{ tcp, udp }} iifgroup 2 oifgroup 1 {offload} comment "offload"
   }}
}}
"""
    )
