"""Netlink messages as bytes: the route-netlink and ctnetlink requests we send, their replies.

No IO: `rtnl.py` (route netlink on the event loop) and `gateway/conntrack.py` (the conntrack
flush) own the sockets. The requests are those `ip` and pyroute2 send for the same change:

    link_by_name("tun0"), link_by_index(5)   RTM_GETLINK            ip link show dev tun0
    set_link(5, mtu=1400, up=True)           RTM_NEWLINK            ip link set tun0 mtu 1400 up
    address_change("add", index=5, ...)      RTM_NEWADDR, DELADDR   ip addr add|del
    route_change("replace", dst=...)         RTM_NEWROUTE, DELROUTE ip route add|replace|del
    route_lookup(address)                    RTM_GETROUTE           ip route get
    conntrack_count()                        IPCTNL_MSG_CT_GET_STATS   conntrack -C
    conntrack_flush(family)                  IPCTNL_MSG_CT_DELETE      conntrack -F -f family

Every request asks for an acknowledgement (NLM_F_ACK), so each one ends with an NLMSG_ERROR
(errno 0: done) or, for a dump, NLMSG_DONE; `Reply` collects one request's answers and turns a
refusal into `NetlinkError`. Layouts: nlmsghdr, nlmsgerr and the attribute header from
<linux/netlink.h>; ifinfomsg from <linux/rtnetlink.h>; ifaddrmsg from <linux/if_addr.h>;
rtmsg from <linux/rtnetlink.h>; nfgenmsg from <linux/netfilter/nfnetlink.h>. Integers are in
host byte order (little-endian here), except netfilter attributes, which are big-endian.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass, field

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# <linux/netlink.h>
NETLINK_ROUTE = 0
NETLINK_NETFILTER = 12
SOL_NETLINK = 270  # <linux/socket.h>
NETLINK_CAP_ACK = 10  # errors echo only the request's header, not the whole request
NETLINK_EXT_ACK = 11  # errors carry the kernel's message (NLMSGERR_ATTR_MSG)
NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE, NLMSG_OVERRUN = 1, 2, 3, 4
NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_ACK = 0x04
NLM_F_REPLACE = 0x100  # for NEW requests: replace what exists
NLM_F_EXCL = 0x200  # for NEW requests: fail if it exists
NLM_F_CREATE = 0x400  # for NEW requests: create if it does not exist
NLM_F_DUMP = 0x300  # for GET requests: NLM_F_ROOT | NLM_F_MATCH
NLM_F_CAPPED = 0x100  # on NLMSG_ERROR: only the request's header is echoed
NLM_F_ACK_TLVS = 0x200  # on NLMSG_ERROR: extended-ack attributes follow
NLMSGERR_ATTR_MSG = 1

# <linux/rtnetlink.h>
RTM_NEWLINK, RTM_GETLINK = 16, 18
RTM_NEWADDR, RTM_DELADDR = 20, 21
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RT_TABLE_MAIN = 254
RTPROT_UNSPEC, RTPROT_STATIC = 0, 4  # static: "installed by administrator" (pyroute2's default)
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK = 0, 253
RTN_UNSPEC, RTN_UNICAST, RTN_LOCAL, RTN_UNREACHABLE = 0, 1, 2, 7
RTNH_F_ONLINK = 0x04  # rtm_flags: the gateway is on the link, whatever the routes say
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY = 1, 4, 5, 6
# <linux/if_link.h>, <linux/if.h>
IFLA_IFNAME, IFLA_MTU = 3, 4
IFF_UP = 0x1
# <linux/if_addr.h>
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
IFA_F_NODAD = 0x02  # no duplicate address detection
IFA_F_NOPREFIXROUTE = 0x200  # the kernel adds no prefix route for the address (Linux >= 3.14)
# <linux/netfilter/nfnetlink.h>, <linux/netfilter/nfnetlink_conntrack.h>
NFNL_SUBSYS_CTNETLINK = 1
NFNETLINK_V0 = 0
IPCTNL_MSG_CT_DELETE = 2  # without a tuple: flush (the nfgenmsg family's entries)
IPCTNL_MSG_CT_GET_STATS = 5
CTA_STATS_GLOBAL_ENTRIES = 1  # be32: entries in this network namespace's table

_HEADER = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_ATTR = struct.Struct("=HH")  # nlattr/rtattr: len, type
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, pad, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")  # ifaddrmsg: family, prefixlen, flags, scope, index
_RTMSG = struct.Struct(
    "=BBBBBBBBI"
)  # rtmsg: family dst_len src_len tos table proto scope type flags
_NFGEN = struct.Struct("=BBH")  # nfgenmsg: family, version, res_id (big-endian, 0 here)
_ERRNO = struct.Struct("=i")  # nlmsgerr.error: 0 (ack) or a negative errno
_U32 = struct.Struct("=I")
_BE32 = struct.Struct("!I")
MAX_ATTRS = 1024  # more in one message is not a reply of the kernel's


class NetlinkError(OSError):
    """The kernel refused a request: `.code` (also `.errno`) is the errno, as pyroute2's."""

    def __init__(self, code: int, request: str, detail: str = "") -> None:
        super().__init__(code, os.strerror(code))
        self.request = request
        self.detail = detail

    @property
    def code(self) -> int:
        return int(self.errno or 0)

    def __str__(self) -> str:
        name = errno.errorcode.get(self.code, str(self.code))
        extra = f"; the kernel says: {self.detail}" if self.detail else ""
        return f"the kernel refused {self.request}: {self.strerror} ({name}){extra}"


class MalformedReply(ValueError):
    """Bytes from the kernel that are not the netlink we expect (the kernel's side, or ours
    reading the wrong socket); never a refusal."""


# --------------------------------------------------------------------------- encoding


@dataclass(frozen=True, slots=True)
class Request:
    """One request without its sequence number; `words` names it in errors and logs."""

    msg_type: int
    flags: int
    body: bytes
    words: str


def encode_request(request: Request, seq: int) -> bytes:
    """nlmsghdr + body; port id 0 lets the kernel fill in ours."""
    length = _HEADER.size + len(request.body)
    return _HEADER.pack(length, request.msg_type, request.flags, seq, 0) + request.body


def encode_attr(attr_type: int, value: bytes) -> bytes:
    """One attribute, padded to 4 bytes (NLA_ALIGN); its length excludes the padding."""
    length = _ATTR.size + len(value)
    return _ATTR.pack(length, attr_type) + value + b"\0" * (-length % 4)


def _u32_attr(attr_type: int, value: int, what: str) -> bytes:
    """A 32-bit attribute; a value out of range is the caller's error (ValueError), never a
    struct.error."""
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{what} {value} is out of range (0 to 4294967295)")
    return encode_attr(attr_type, _U32.pack(value))


def _family_of(address: IPAddress | ipaddress.IPv4Network | ipaddress.IPv6Network) -> int:
    return socket.AF_INET if address.version == 4 else socket.AF_INET6


def _address(text: str, family: int, what: str) -> IPAddress:
    value = ipaddress.ip_address(text)
    if _family_of(value) != family:
        raise ValueError(f"{what} {text} is not of address family {family}")
    if getattr(value, "scope_id", None):  # the kernel takes the interface from the request
        raise ValueError(f"{what} {text} names a scope, which netlink cannot carry")
    return value


def link_by_name(name: str) -> Request:
    encoded = name.encode()
    if not 0 < len(encoded) < 16 or b"\0" in encoded:  # IFNAMSIZ, with its terminating NUL
        raise ValueError(f"{name!r} is not an interface name")
    body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + encode_attr(IFLA_IFNAME, encoded + b"\0")
    return Request(RTM_GETLINK, NLM_F_REQUEST | NLM_F_ACK, body, f"looking up link {name}")


def link_by_index(index: int) -> Request:
    body = _IFINFO.pack(socket.AF_UNSPEC, 0, index, 0, 0)
    return Request(RTM_GETLINK, NLM_F_REQUEST | NLM_F_ACK, body, f"looking up link #{index}")


def set_link(index: int, *, mtu: int | None = None, up: bool = False) -> Request:
    """`ip link set`: bring the link up (IFF_UP in flags and change mask) and/or set its MTU."""
    body = _IFINFO.pack(socket.AF_UNSPEC, 0, index, IFF_UP if up else 0, IFF_UP if up else 0)
    if mtu is not None:
        body += _u32_attr(IFLA_MTU, mtu, "MTU")
    words = " ".join(
        [f"setting link #{index}", *([f"mtu {mtu}"] if mtu is not None else []), *(["up"] * up)]
    )
    return Request(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, body, words)


def address_change(
    command: str,
    *,
    index: int,
    family: int,
    address: str,
    prefixlen: int,
    local: str | None = None,
    flags: int = 0,
) -> Request:
    """`ip addr add|del`: `address`/`prefixlen` on link `index`; with `local`, `local` is ours
    and `address` its point-to-point peer. IPv4 always names the local address (IFA_LOCAL), as
    `ip` does; `flags` (IFA_F_*) go in the 32-bit IFA_FLAGS attribute."""
    peer = _address(address, family, "address")
    mine = _address(local, family, "local address") if local is not None else peer
    if not 0 <= prefixlen <= peer.max_prefixlen:
        raise ValueError(f"prefix length {prefixlen} is out of range for {peer}")
    body = _IFADDR.pack(family, prefixlen, 0, RT_SCOPE_UNIVERSE, index)
    if family == socket.AF_INET or local is not None:
        body += encode_attr(IFA_LOCAL, mine.packed)
    body += encode_attr(IFA_ADDRESS, peer.packed)
    if flags:
        body += _u32_attr(IFA_FLAGS, flags, "address flags")
    if command not in ("add", "del"):
        raise ValueError(f"unknown address command {command!r} (add or del)")
    if command == "add":
        return Request(
            RTM_NEWADDR,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE,
            body,
            f"adding address {mine}/{prefixlen} to link #{index}",
        )
    words = f"removing address {mine}/{prefixlen} from link #{index}"
    return Request(RTM_DELADDR, NLM_F_REQUEST | NLM_F_ACK, body, words)


_ROUTE_FLAGS = {
    "add": NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE,
    "replace": NLM_F_REQUEST | NLM_F_ACK | NLM_F_REPLACE | NLM_F_CREATE,
    "del": NLM_F_REQUEST | NLM_F_ACK,
}


def route_change(
    command: str,
    *,
    dst: str,
    family: int,
    oif: int | None = None,
    gateway: str | None = None,
    scope: int = RT_SCOPE_UNIVERSE,
    priority: int | None = None,
    flags: int = 0,
    route_type: int | None = None,
) -> Request:
    """`ip route add|replace|del dst [via gateway] [dev oif] [metric priority] [onlink]` in the
    main table. Added routes are `proto static`, of type `route_type` (default unicast); a
    delete matches any protocol and, without `route_type`, any type (as pyroute2 sends it)."""
    if command not in _ROUTE_FLAGS:
        raise ValueError(f"unknown route command {command!r} (add, replace or del)")
    network = ipaddress.ip_network(dst)
    if _family_of(network) != family:
        raise ValueError(f"route {dst} is not of address family {family}")
    _address(str(network.network_address), family, "route")  # no scope either
    if command == "del":
        protocol, kind = RTPROT_UNSPEC, route_type or RTN_UNSPEC
    else:
        protocol, kind = RTPROT_STATIC, route_type or RTN_UNICAST
    body = _RTMSG.pack(family, network.prefixlen, 0, 0, RT_TABLE_MAIN, protocol, scope, kind, flags)
    if network.prefixlen:
        body += encode_attr(RTA_DST, network.network_address.packed)
    if gateway is not None:
        body += encode_attr(RTA_GATEWAY, _address(gateway, family, "gateway").packed)
    if oif is not None:
        body += _u32_attr(RTA_OIF, oif, "interface index")
    if priority is not None:
        body += _u32_attr(RTA_PRIORITY, priority, "metric")
    verb = {"add": "adding", "replace": "replacing", "del": "removing"}[command]
    words = f"{verb} route {network}" + (f" via {gateway}" if gateway else "")
    words += f" dev #{oif}" if oif is not None else ""
    msg_type = RTM_DELROUTE if command == "del" else RTM_NEWROUTE
    return Request(msg_type, _ROUTE_FLAGS[command], body, words)


def route_lookup(dst: IPAddress) -> Request:
    """`ip route get dst`: the kernel answers with one RTM_NEWROUTE (or refuses: no route)."""
    family = _family_of(dst)
    body = _RTMSG.pack(family, dst.max_prefixlen, 0, 0, RT_TABLE_MAIN, 0, 0, 0, 0)
    body += encode_attr(RTA_DST, dst.packed)
    return Request(RTM_GETROUTE, NLM_F_REQUEST | NLM_F_ACK, body, f"looking up the route to {dst}")


def _ctnetlink(message: int, flags: int, family: int, words: str) -> Request:
    msg_type = (NFNL_SUBSYS_CTNETLINK << 8) | message
    return Request(msg_type, flags, _NFGEN.pack(family, NFNETLINK_V0, 0), words)


def conntrack_count() -> Request:
    """`conntrack -C`: the number of entries in this network namespace's table."""
    return _ctnetlink(
        IPCTNL_MSG_CT_GET_STATS, NLM_F_REQUEST | NLM_F_ACK, socket.AF_UNSPEC, "counting conntrack"
    )


def conntrack_flush(family: int) -> Request:
    """`conntrack -F -f family`: delete every entry of `family` (AF_INET or AF_INET6)."""
    words = f"flushing {'IPv4' if family == socket.AF_INET else 'IPv6'} connection tracking"
    return _ctnetlink(IPCTNL_MSG_CT_DELETE, NLM_F_REQUEST | NLM_F_ACK, family, words)


# --------------------------------------------------------------------------- decoding


@dataclass(frozen=True, slots=True)
class Message:
    """One netlink message: its header fields and what follows the header."""

    msg_type: int
    flags: int
    seq: int
    pid: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Link:
    index: int
    name: str
    mtu: int


@dataclass(frozen=True, slots=True)
class Route:
    """A route the kernel reported (RTM_NEWROUTE): the fields we read."""

    family: int
    route_type: int  # RTN_*: RTN_LOCAL for one of this system's own addresses
    oif: int | None
    gateway: IPAddress | None


def decode_messages(data: bytes) -> list[Message]:
    """Split one datagram into its messages (each padded to 4 bytes)."""
    messages: list[Message] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < _HEADER.size:
            raise MalformedReply(f"{len(data) - offset} stray bytes after the last message")
        length, msg_type, flags, seq, pid = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size or offset + length > len(data):
            raise MalformedReply(f"a message of length {length} in {len(data) - offset} bytes")
        messages.append(
            Message(msg_type, flags, seq, pid, data[offset + _HEADER.size : offset + length])
        )
        offset += length + (-length % 4)
    return messages


def decode_attrs(data: bytes) -> dict[int, bytes]:
    """Attribute type -> value (the last one wins); the nested and byte-order flags of the type
    are dropped."""
    attrs: dict[int, bytes] = {}
    offset = 0
    while len(data) - offset >= _ATTR.size:
        length, attr_type = _ATTR.unpack_from(data, offset)
        if length < _ATTR.size or offset + length > len(data):
            raise MalformedReply(f"an attribute of length {length} in {len(data) - offset} bytes")
        if len(attrs) >= MAX_ATTRS:
            raise MalformedReply(f"more than {MAX_ATTRS} attributes in one message")
        attrs[attr_type & 0x3FFF] = data[offset + _ATTR.size : offset + length]
        offset += length + (-length % 4)
    return attrs


def _u32(value: bytes, what: str) -> int:
    if len(value) != 4:
        raise MalformedReply(f"{what} has {len(value)} bytes, not 4")
    return int(_U32.unpack(value)[0])


def decode_link(message: Message) -> Link:
    if message.msg_type != RTM_NEWLINK or len(message.payload) < _IFINFO.size:
        raise MalformedReply(f"not a link (message type {message.msg_type})")
    index = _IFINFO.unpack_from(message.payload)[2]
    attrs = decode_attrs(message.payload[_IFINFO.size :])
    if IFLA_IFNAME not in attrs or IFLA_MTU not in attrs:
        raise MalformedReply(f"link #{index} without a name or an MTU")
    name = attrs[IFLA_IFNAME].split(b"\0", 1)[0].decode(errors="replace")
    return Link(index=index, name=name, mtu=_u32(attrs[IFLA_MTU], "IFLA_MTU"))


def decode_route(message: Message) -> Route:
    if message.msg_type != RTM_NEWROUTE or len(message.payload) < _RTMSG.size:
        raise MalformedReply(f"not a route (message type {message.msg_type})")
    fields = _RTMSG.unpack_from(message.payload)
    family, route_type = fields[0], fields[7]
    attrs = decode_attrs(message.payload[_RTMSG.size :])
    gateway: IPAddress | None = None
    if RTA_GATEWAY in attrs:
        try:
            gateway = ipaddress.ip_address(attrs[RTA_GATEWAY])
        except ValueError:
            raise MalformedReply(f"a gateway of {len(attrs[RTA_GATEWAY])} bytes") from None
    oif = _u32(attrs[RTA_OIF], "RTA_OIF") if RTA_OIF in attrs else None
    return Route(family=family, route_type=route_type, oif=oif, gateway=gateway)


def decode_conntrack_count(message: Message) -> int:
    if len(message.payload) < _NFGEN.size:
        raise MalformedReply("a conntrack statistics message without its nfgenmsg")
    attrs = decode_attrs(message.payload[_NFGEN.size :])
    value = attrs.get(CTA_STATS_GLOBAL_ENTRIES)
    if value is None or len(value) != 4:
        raise MalformedReply("conntrack statistics without CTA_STATS_GLOBAL_ENTRIES")
    return int(_BE32.unpack(value)[0])


def decode_error(message: Message) -> tuple[int, str]:
    """(errno, the kernel's words or "") of an NLMSG_ERROR; errno 0 is an acknowledgement."""
    if len(message.payload) < _ERRNO.size:
        raise MalformedReply(f"an error message of {len(message.payload)} bytes")
    code = -int(_ERRNO.unpack_from(message.payload)[0])
    if code < 0:
        raise MalformedReply(f"a positive error number {-code}")
    detail = ""
    if message.flags & NLM_F_ACK_TLVS and len(message.payload) >= _ERRNO.size + _HEADER.size:
        echoed = _HEADER.size
        if not message.flags & NLM_F_CAPPED:  # the whole request is echoed before the TLVs
            echoed = _HEADER.unpack_from(message.payload, _ERRNO.size)[0]
            echoed += -echoed % 4
        text = decode_attrs(message.payload[_ERRNO.size + echoed :]).get(NLMSGERR_ATTR_MSG, b"")
        detail = text.split(b"\0", 1)[0].decode(errors="replace")
    return code, detail


@dataclass
class Reply:
    """The answers to request `seq`, fed datagram by datagram until the kernel is done: an
    acknowledgement, a refusal (raised as `NetlinkError`) or, after a dump, NLMSG_DONE.
    Messages of other requests (one we gave up on) are dropped."""

    seq: int
    words: str
    answers: list[Message] = field(default_factory=list)
    done: bool = False

    def receive(self, data: bytes) -> bool:
        """Take one datagram; True once the request is complete."""
        for message in decode_messages(data):
            if self.done or message.seq != self.seq or message.msg_type == NLMSG_NOOP:
                continue
            if message.msg_type == NLMSG_ERROR:
                code, detail = decode_error(message)
                self.done = True
                if code:
                    raise NetlinkError(code, self.words, detail)
            elif message.msg_type == NLMSG_DONE:
                self.done = True
            elif message.msg_type == NLMSG_OVERRUN:
                raise MalformedReply(f"the kernel lost data answering {self.words}")
            else:
                self.answers.append(message)
        return self.done
