"""Key method 2: the first TLS application data each way, peer-info, the OCC options string.

Reference §4.2 (ssl.c: key_method_2_write / key_method_2_read, write_string / read_string):

    client -> server: 00000000 | 02 | pre_master[48] | random1[32] | random2[32]
                      | options | username | password | peer_info
    server -> client: 00000000 | 02 | random1[32] | random2[32] | options
                      | username | password | [peer_info]          (the last three empty)

A string is `u16 length || bytes || NUL`, the length counting the NUL; an absent string is
length 0 with no bytes (OpenVPN's write_empty_string). The whole client message must fit the
server's 2048-byte plaintext buffer (ssl_common.h: TLS_CHANNEL_BUF_SIZE).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .config.model import KeyDirection, Transport
from .errors import DecodeError

__all__ = [
    "IV_PROTO_AUTH_FAIL_TEMP",
    "IV_PROTO_AUTH_PENDING_KW",
    "IV_PROTO_CC_EXIT_NOTIFY",
    "IV_PROTO_DATA_V2",
    "IV_PROTO_DNS_OPTION",
    "IV_PROTO_DYN_TLS_CRYPT",
    "IV_PROTO_REQUEST_PUSH",
    "IV_PROTO_TLS_KEY_EXPORT",
    "KEY_METHOD_2",
    "MAX_KEY_METHOD_2_MESSAGE",
    "TLS_OPTIONS_LEN",
    "ClientKeySource",
    "ServerKeyMethod2",
    "build_options_string",
    "build_peer_info",
    "decode_server_key_method_2",
    "encode_client_key_method_2",
    "link_mtu",
    "server_key_method_2_length",
]

KEY_METHOD_2 = 2
KEY_METHOD_MASK = 0x0F  # ssl.h: KEY_METHOD_MASK (the high bits are flags)
TLS_OPTIONS_LEN = 512  # ssl_common.h: the options string, NUL included
MAX_KEY_METHOD_2_MESSAGE = 2048  # ssl_common.h: TLS_CHANNEL_BUF_SIZE
PRE_MASTER_LENGTH = 48  # ssl_common.h: key_source.pre_master
RANDOM_LENGTH = 32  # ssl_common.h: key_source.random1 / random2
MAX_PEER_INFO_LINE = 255  # ssl_verify.c: peer-info lines are cut at 255 characters

# IV_PROTO bits (ssl.h; reference §4.4). Bit 0 is reserved; a client sending flags must also
# set IV_PROTO_DATA_V2 (old servers test IV_PROTO >= 2).
IV_PROTO_DATA_V2 = 1 << 1
IV_PROTO_REQUEST_PUSH = 1 << 2
IV_PROTO_TLS_KEY_EXPORT = 1 << 3
IV_PROTO_AUTH_PENDING_KW = 1 << 4
IV_PROTO_NCP_P2P = 1 << 5  # never in a pull client
IV_PROTO_DNS_OPTION = 1 << 6
IV_PROTO_CC_EXIT_NOTIFY = 1 << 7
IV_PROTO_AUTH_FAIL_TEMP = 1 << 8
IV_PROTO_DYN_TLS_CRYPT = 1 << 9
IV_PROTO_DATA_EPOCH = 1 << 10  # 2.7 only
IV_PROTO_DNS_OPTION_V2 = 1 << 11  # 2.7 only
IV_PROTO_PUSH_UPDATE = 1 << 12  # 2.7 only

_U16 = struct.Struct("!H")
_PEER_INFO_NAME = re.compile(r"[A-Za-z0-9_]+")


@dataclass(frozen=True, slots=True)
class ClientKeySource:
    """The client's key-method-2 randoms (ssl_common.h: struct key_source)."""

    pre_master: bytes
    random1: bytes
    random2: bytes

    def __post_init__(self) -> None:
        if len(self.pre_master) != PRE_MASTER_LENGTH:
            raise ValueError("pre_master must be 48 bytes")
        if len(self.random1) != RANDOM_LENGTH or len(self.random2) != RANDOM_LENGTH:
            raise ValueError("random1 and random2 must be 32 bytes")

    def __repr__(self) -> str:
        return "ClientKeySource(<redacted>)"

    @classmethod
    def from_rng(cls, rng: Callable[[int], bytes]) -> ClientKeySource:
        return cls(rng(PRE_MASTER_LENGTH), rng(RANDOM_LENGTH), rng(RANDOM_LENGTH))


@dataclass(frozen=True, slots=True)
class ServerKeyMethod2:
    """What the server sends: its randoms and OCC options string (the rest is normally empty)."""

    random1: bytes
    random2: bytes
    options: str
    username: str | None = None
    password: bytes | None = None
    peer_info: str | None = None

    def __repr__(self) -> str:
        return f"ServerKeyMethod2(options={self.options!r}, <randoms redacted>)"


def _encode_string(value: bytes | None) -> bytes:
    if value is None:
        return b"\x00\x00"
    if b"\x00" in value:
        raise ValueError("key-method-2 strings cannot contain NUL")
    return _U16.pack(len(value) + 1) + value + b"\x00"


def encode_client_key_method_2(
    source: ClientKeySource,
    *,
    options: str,
    username: str | None,
    password: bytes | None,
    peer_info: str,
) -> bytes:
    """The client's key-method-2 message. `username`/`password` None = not sent (length 0),
    as OpenVPN does without auth-user-pass; ValueError if anything is too long."""
    encoded_options = options.encode()
    if len(encoded_options) + 1 > TLS_OPTIONS_LEN:
        raise ValueError(f"options string over {TLS_OPTIONS_LEN - 1} bytes")
    message = b"".join(
        (
            b"\x00\x00\x00\x00",
            bytes((KEY_METHOD_2,)),
            source.pre_master,
            source.random1,
            source.random2,
            _encode_string(encoded_options),
            _encode_string(None if username is None else username.encode()),
            _encode_string(password),
            _encode_string(peer_info.encode() if peer_info else None),
        )
    )
    if len(message) > MAX_KEY_METHOD_2_MESSAGE:
        raise ValueError(
            f"key-method-2 message of {len(message)} bytes, at most {MAX_KEY_METHOD_2_MESSAGE}"
        )
    return message


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, what: str) -> bytes:
        if self.remaining() < n:
            raise DecodeError(f"key-method-2 message truncated in {what}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def string(self, what: str, limit: int | None = None) -> bytes | None:
        """A u16-length string; None for length 0. As OpenVPN's read_string, the last byte
        (the NUL) is dropped, and anything after an inner NUL is ignored."""
        (length,) = _U16.unpack(self.take(2, what))
        if length == 0:
            return None
        if limit is not None and length > limit:
            raise DecodeError(f"key-method-2 {what} of {length} bytes, at most {limit}")
        raw = self.take(length, what)[:-1]
        return raw.split(b"\x00", 1)[0]


def decode_server_key_method_2(data: bytes) -> ServerKeyMethod2:
    """The server's key-method-2 message; DecodeError if malformed.

    Username, password and peer-info may be absent or of length 0; bytes after them are
    ignored (as OpenVPN does)."""
    r = _Reader(bytes(data))
    if r.take(4, "the leading zeros") != b"\x00\x00\x00\x00":
        raise DecodeError("key-method-2 message does not start with 4 zero bytes")
    method = r.take(1, "the key method")[0]
    if method & KEY_METHOD_MASK != KEY_METHOD_2:
        raise DecodeError(f"unknown key method/flags {method}")
    random1 = r.take(RANDOM_LENGTH, "random1")
    random2 = r.take(RANDOM_LENGTH, "random2")
    options = r.string("options string", TLS_OPTIONS_LEN) or b""
    username = r.string("username") if r.remaining() else None
    password = r.string("password") if r.remaining() else None
    peer_info = r.string("peer-info") if r.remaining() else None
    return ServerKeyMethod2(
        random1=random1,
        random2=random2,
        options=options.decode("utf-8", "replace"),
        username=None if username is None else username.decode("utf-8", "replace"),
        password=password,
        peer_info=None if peer_info is None else peer_info.decode("utf-8", "replace"),
    )


def server_key_method_2_length(data: bytes) -> int | None:
    """The length of the server's key-method-2 message at the start of `data` (TLS plaintext
    that may go on with control messages), or None while it is incomplete.

    Complete means all four strings are there, as a 2.6 server always writes them (it writes
    empty username, password and peer-info as length 0). DecodeError if the fixed head is
    malformed; `decode_server_key_method_2(data[:length])` then decodes it."""
    head = 4 + 1 + 2 * RANDOM_LENGTH
    if len(data) < head:
        return None
    if data[:4] != b"\x00\x00\x00\x00":
        raise DecodeError("key-method-2 message does not start with 4 zero bytes")
    if data[4] & KEY_METHOD_MASK != KEY_METHOD_2:
        raise DecodeError(f"unknown key method/flags {data[4]}")
    position = head
    for _ in range(4):  # options, username, password, peer-info
        if len(data) < position + 2:
            return None
        position += 2 + _U16.unpack_from(data, position)[0]
    return position if position <= len(data) else None


# --------------------------------------------------------------------------- peer-info


def build_peer_info(
    *,
    version: str,
    platform: str,
    ciphers: Sequence[str],
    iv_proto: int,
    mtu: int | None,
    tcpnl: bool = True,
    compression_stubs: bool = True,
    compression_algorithms: Sequence[str] = (),
    extra: Mapping[str, str] | None = None,
) -> str:
    """The peer-info block of a pull client, in 2.6's order (ssl.c: push_peer_info).

    `extra` adds lines such as IV_GUI_VER, IV_SSO or UV_* (names `[A-Za-z0-9_]+`).
    IV_NCP=2 is sent when `ciphers` contains both AES-128-GCM and AES-256-GCM (legacy).
    `compression_algorithms` (IV_LZ4, IV_LZ4v2, IV_LZO: what we decompress) go before the
    stubs, and IV_LZO replaces IV_LZO_STUB (comp.c: comp_generate_peer_info_string)."""
    if iv_proto & 1:
        raise ValueError("IV_PROTO bit 0 is reserved")
    if iv_proto and not iv_proto & IV_PROTO_DATA_V2:
        raise ValueError("IV_PROTO with flags must include IV_PROTO_DATA_V2")
    lines: list[tuple[str, str]] = [("IV_VER", version), ("IV_PLAT", platform)]
    if tcpnl:
        lines.append(("IV_TCPNL", "1"))
    if mtu is not None:
        lines.append(("IV_MTU", str(mtu)))
    upper = [c.upper() for c in ciphers]
    if "AES-128-GCM" in upper and "AES-256-GCM" in upper:
        lines.append(("IV_NCP", "2"))
    if ciphers:
        joined = ":".join(ciphers)
        if len(joined) > 127:
            raise ValueError("IV_CIPHERS over 127 characters")
        lines.append(("IV_CIPHERS", joined))
    lines.append(("IV_PROTO", str(iv_proto)))
    lines += [(name, "1") for name in compression_algorithms]
    if compression_stubs:
        if "IV_LZO" not in compression_algorithms:
            lines.append(("IV_LZO_STUB", "1"))
        lines += [("IV_COMP_STUB", "1"), ("IV_COMP_STUBv2", "1")]
    lines += list((extra or {}).items())
    out = []
    for name, value in lines:
        if not _PEER_INFO_NAME.fullmatch(name):
            raise ValueError(f"bad peer-info name {name!r}")
        line = f"{name}={value}"
        if not value.isprintable() or len(line) > MAX_PEER_INFO_LINE:
            raise ValueError(f"bad peer-info value for {name}")
        out.append(line + "\n")
    return "".join(out)


# --------------------------------------------------------------------------- OCC string

# (key bits, IV bytes, block bytes, AEAD) of data ciphers, as OpenSSL reports them; used for
# the informational link-mtu and keysize items of the options string.
_CIPHERS: dict[str, tuple[int, int, int, bool]] = {
    "AES-128-GCM": (128, 12, 16, True),
    "AES-192-GCM": (192, 12, 16, True),
    "AES-256-GCM": (256, 12, 16, True),
    "CHACHA20-POLY1305": (256, 12, 1, True),
    "AES-128-CBC": (128, 16, 16, False),
    "AES-192-CBC": (192, 16, 16, False),
    "AES-256-CBC": (256, 16, 16, False),
    "BF-CBC": (128, 8, 8, False),  # 2.6's internal default when no cipher is configured
}
_DIGEST_SIZES = {"MD5": 16, "SHA1": 20, "SHA224": 28, "SHA256": 32, "SHA384": 48, "SHA512": 64}


def link_mtu(
    *,
    tun_mtu: int,
    cipher: str | None,
    auth: str,
    transport: Transport = Transport.UDP,
    compression: bool = False,
) -> int:
    """The `link-mtu` OpenVPN 2.6 puts in its OCC string (options.c:
    calc_options_string_link_mtu, with the old IV-and-block overhead kept for compatibility).

    Checked against test_crypto.c: test_occ_mtu_calculation (AES-256-GCM at tun-mtu 1400 ->
    1449; AES-128-CBC/SHA1 -> 1457) and the reference §4.3 strings (1549, 1541)."""
    key_bits, iv, block, aead = _CIPHERS.get((cipher or "BF-CBC").upper(), _CIPHERS["BF-CBC"])
    del key_bits
    mac = 16 if aead else _DIGEST_SIZES.get(auth.upper(), 20)
    overhead = 1 + 4 + mac + iv + block  # opcode, packet id, tag/HMAC, IV, block
    if transport is Transport.TCP:
        overhead += 2
    if compression:
        overhead += 1
    return tun_mtu + overhead


def build_options_string(
    *,
    cipher: str | None,
    auth: str = "SHA1",
    tun_mtu: int = 1500,
    transport: Transport = Transport.UDP,
    dev_type: str = "tun",
    compression: bool = False,
    tls_auth: bool = False,
    key_direction: KeyDirection | None = None,
) -> str:
    """The OCC options string of a 2.6 TLS client (options.c: options_string; reference §4.3).

    `cipher` is the `cipher` option if it is among data-ciphers (else None: not announced,
    2.6 then describes its internal BF-CBC); the server only logs mismatches."""
    items = [
        "V4",
        f"dev-type {dev_type}",
        "link-mtu "
        + str(
            link_mtu(
                tun_mtu=tun_mtu,
                cipher=cipher,
                auth=auth,
                transport=transport,
                compression=compression,
            )
        ),
        f"tun-mtu {tun_mtu}",
        "proto " + ("UDPv4" if transport is Transport.UDP else "TCPv4_CLIENT"),
    ]
    if compression:
        items.append("comp-lzo")
    if tls_auth and key_direction is not None:
        items.append(f"keydir {int(key_direction)}")
    known = _CIPHERS.get((cipher or "BF-CBC").upper(), _CIPHERS["BF-CBC"])
    if cipher is not None:
        items.append(f"cipher {cipher.upper()}")
    items.append("auth [null-digest]" if known[3] else f"auth {auth.upper()}")
    items.append(f"keysize {known[0]}")
    if tls_auth:
        items.append("tls-auth")
    items += ["key-method 2", "tls-client"]
    return ",".join(items)
