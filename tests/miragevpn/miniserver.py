"""An in-memory OpenVPN 2.6 UDP server for engine scenarios (no sockets, no clock).

`MiniServer` plays the server's side of the control channel: one key state per key id (its
own reliable channel and a pyOpenSSL server over memory BIOs), the hard reset and soft resets
(answering the client's, or starting its own with `soft_reset`), a key-method-2 reply and a
scripted PUSH_REPLY. `data_key(key_id)` is the server's data channel key of a negotiated key
id: the client's EKM key2 with the halves swapped. Time is a plain float the tests move.

Control packets are plain unless `tls_crypt` gives the server a tls-crypt key; with
`dynamic_tls_crypt` the server does what 2.6 does for a client announcing IV_PROTO bit 9: when
it answers PUSH_REQUEST it makes the session's dynamic tls-crypt key (written out here from
OpenVPN's tls_crypt.c, independently of miragevpn.dyncrypt) and wraps key ids > 0 with it.
`wrap_kid(key_id)` is the wrap the server uses for a key id.
"""

from __future__ import annotations

from cryptography import x509
from OpenSSL import SSL

from miragevpn.config.model import (
    Compression,
    KeyDirection,
    ReplayWindow,
    Secret,
    StaticKey,
    TlsCrypt,
)
from miragevpn.datachannel import PING_MAGIC, DataChannelKey
from miragevpn.errors import DecodeError
from miragevpn.kdf import EKM_LABEL, client_data_keys
from miragevpn.openssl_compat import ssl_certificate, ssl_private_key, trust_certificate
from miragevpn.packet import ControlPacket, Opcode
from miragevpn.reliable import ReliableChannel
from miragevpn.tls_wrap import ControlChannelWrap, PlainWrap, TlsCryptWrap
from tests.helpers.pki import Pki

SERVER_SID = bytes.fromhex("5e5e5e5e5e5e5e5e")
REPLY = (
    "PUSH_REPLY,route-gateway 10.8.0.1,topology subnet,ping 10,ping-restart 60,"
    "ifconfig 10.8.0.2 255.255.255.0,peer-id 7,cipher AES-256-GCM,"
    "protocol-flags cc-exit tls-ekm,route 192.168.100.0 255.255.255.0,dhcp-option DNS 10.8.0.1"
)
# A 2.6 server's key-method-2 message: zeros, method 2, randoms, options "V4", three empty
# strings (reference §4.2).
SERVER_KEY_METHOD_2 = b"\0\0\0\0\x02" + b"\x11" * 64 + b"\x00\x03V4\x00" + b"\x00\x00" * 3
CLIENT_KEY_METHOD_2_MIN = 4 + 1 + 48 + 64 + 2  # up to the options length
SERVER_WALL = 1_800_000_000.0  # the server's Unix time in its replay ids


class ServerKeyState:
    """The server side of one key id."""

    def __init__(self, ctx: SSL.Context, key_id: int) -> None:
        self.key_id = key_id
        self.tls = SSL.Connection(ctx, None)
        self.tls.set_accept_state()
        self.reliable = ReliableChannel(key_id=key_id, tls_timeout=2.0)
        self.reset_sent = False
        self.plaintext = b""
        self.km2_done = False
        self.data: DataChannelKey | None = None  # made on first use (data_key)

    def send_reset(self, opcode: Opcode) -> None:
        if not self.reset_sent:
            self.reset_sent = True
            self.reliable.send(opcode, b"")


class MiniServer:
    """The server half of one session, plain control packets (see the module doc)."""

    def __init__(
        self,
        pki: Pki,
        *,
        reply: str = REPLY,
        peer_id: int | None = 7,
        client_ca: x509.Certificate | None = None,
        send_alerts: bool = True,
        key_method_2: bytes = SERVER_KEY_METHOD_2,
        tls_crypt: TlsCrypt | None = None,
        dynamic_tls_crypt: bool = False,
    ) -> None:
        """`client_ca`: verify the client's certificate against this CA (a failed check ends
        the server's TLS with an alert, which goes out only if `send_alerts`; OpenVPN 2.6
        over TCP closes the connection instead)."""
        self.ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        self.ctx.use_certificate(ssl_certificate(pki.server.cert))
        self.ctx.use_privatekey(ssl_private_key(pki.server.key))
        if client_ca is not None:
            trust_certificate(self.ctx, client_ca)
            self.ctx.set_verify(
                SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *args: bool(args[-1])
            )
        self.send_alerts = send_alerts
        self.key_method_2 = key_method_2  # what the server answers the client's with
        self.client_key_methods: dict[int, bytes] = {}  # the client's key-method-2 by key id
        self.tls_errors: list[str] = []  # the server's own TLS failures
        self.keys: dict[int, ServerKeyState] = {0: ServerKeyState(self.ctx, 0)}
        self.client_sid: bytes | None = None
        self.reply = reply
        self.peer_id = peer_id
        self.texts: list[str] = []
        self.client_soft_resets: list[int] = []  # key ids the client began
        self.data_packets: list[bytes] = []  # data packets from the client (not decrypted)
        self.tls_crypt = tls_crypt
        self.wrap: ControlChannelWrap = (
            PlainWrap()
            if tls_crypt is None
            else TlsCryptWrap(tls_crypt.key, direction=KeyDirection.NORMAL)
        )
        self.dynamic_tls_crypt = dynamic_tls_crypt
        self.dynamic_wrap: TlsCryptWrap | None = None  # made when answering PUSH_REQUEST
        self.unwrap_failures: list[str] = []  # control packets the server could not unwrap

    @property
    def tls(self) -> SSL.Connection:
        return self.keys[0].tls

    def soft_reset(self, key_id: int) -> None:
        """Begin a renegotiation with `key_id` (the server's P_CONTROL_SOFT_RESET_V1)."""
        key = self.keys[key_id] = ServerKeyState(self.ctx, key_id)
        key.send_reset(Opcode.P_CONTROL_SOFT_RESET_V1)

    def negotiated(self, key_id: int) -> bool:
        key = self.keys.get(key_id)
        return key is not None and key.km2_done

    def wrap_kid(self, key_id: int) -> ControlChannelWrap:
        """ssl_pkt.h: tls_session_get_tls_wrap."""
        if key_id > 0 and self.dynamic_wrap is not None:
            return self.dynamic_wrap
        return self.wrap

    def _make_dynamic_wrap(self) -> None:
        """tls_crypt.c: tls_session_generate_dynamic_tls_crypt_key, the server's side."""
        ekm = self.keys[0].tls.export_keying_material(b"EXPORTER-OpenVPN-dynamic-tls-crypt", 256)
        if self.tls_crypt is not None:
            ekm = bytes(a ^ b for a, b in zip(ekm, self.tls_crypt.key.key.value, strict=True))
        key = StaticKey(Secret(ekm))
        self.dynamic_wrap = TlsCryptWrap(key, direction=KeyDirection.NORMAL)

    def receive(self, wire: bytes, now: float) -> None:
        if wire[0] >> 3 in (Opcode.P_DATA_V1, Opcode.P_DATA_V2):
            self.data_packets.append(wire)
            return
        try:
            packet = self.wrap_kid(wire[0] & 7).unwrap(wire, now)
        except DecodeError as exc:
            self.unwrap_failures.append(str(exc))
            return
        self.client_sid = packet.session_id
        key = self.keys.get(packet.key_id)
        if key is None:
            if packet.opcode is not Opcode.P_CONTROL_SOFT_RESET_V1:
                return
            key = self.keys[packet.key_id] = ServerKeyState(self.ctx, packet.key_id)
            self.client_soft_resets.append(packet.key_id)
        for opcode, payload in key.reliable.receive(packet, now):
            if opcode is Opcode.P_CONTROL_HARD_RESET_CLIENT_V2:
                key.send_reset(Opcode.P_CONTROL_HARD_RESET_SERVER_V2)
            elif opcode is Opcode.P_CONTROL_SOFT_RESET_V1:
                key.send_reset(Opcode.P_CONTROL_SOFT_RESET_V1)
            elif opcode is Opcode.P_CONTROL_V1:
                key.tls.bio_write(payload)
                self._pump(key)

    def _pump(self, key: ServerKeyState) -> None:
        try:
            key.tls.do_handshake()
        except SSL.WantReadError:
            pass
        except SSL.Error as exc:
            self.tls_errors.append(str(exc))
            if self.send_alerts:
                self._flush(key)
            return
        else:
            try:
                while True:
                    key.plaintext += key.tls.recv(65536)
            except SSL.WantReadError:
                pass
            if not key.km2_done and len(key.plaintext) > CLIENT_KEY_METHOD_2_MIN:
                key.km2_done = True
                # the client's key-method-2 (its layout: test_keymethod)
                self.client_key_methods[key.key_id] = key.plaintext
                key.plaintext = b""
                key.tls.send(self.key_method_2)
            while b"\0" in key.plaintext:
                text, _, key.plaintext = key.plaintext.partition(b"\0")
                self.texts.append(text.decode())
                if text == b"PUSH_REQUEST":
                    if self.dynamic_tls_crypt and self.dynamic_wrap is None:
                        self._make_dynamic_wrap()
                    key.tls.send(self.reply.encode() + b"\0")
        self._flush(key)

    def send_text(self, text: str) -> None:
        """One control message on the newest negotiated key id."""
        key = max((k for k in self.keys.values() if k.km2_done), key=lambda k: k.key_id)
        key.tls.send(text.encode() + b"\0")
        self._flush(key)

    def _flush(self, key: ServerKeyState) -> None:
        out = b""
        try:
            while True:
                out += key.tls.bio_read(65536)
        except SSL.WantReadError:
            pass
        for position in range(0, len(out), 1000):
            key.reliable.send(Opcode.P_CONTROL_V1, out[position : position + 1000])

    def to_send(self, now: float) -> list[bytes]:
        out = []
        for key in self.keys.values():
            packets = key.reliable.packets_to_send(
                now, my_session_id=SERVER_SID, their_session_id=self.client_sid
            )
            out += [self.wrap_kid(p.key_id).wrap(p, SERVER_WALL) for p in packets]
        return out

    def wrapped(self, packet: ControlPacket) -> bytes:
        """`packet` wrapped as the server would send it now."""
        return self.wrap_kid(packet.key_id).wrap(packet, SERVER_WALL)

    def keepalive(self) -> list[bytes]:
        """A ping on the newest negotiated key (keeps the client's ping-restart away)."""
        newest = max(k.key_id for k in self.keys.values() if k.km2_done)
        return [self.data_key(newest).encrypt(PING_MAGIC)]

    def data_key(self, key_id: int = 0, cipher: str = "AES-256-GCM") -> DataChannelKey:
        """The server's data channel of `key_id`: the client's key2 with the halves swapped."""
        key = self.keys[key_id]
        if key.data is None:
            key.data = self._data_key(key, cipher)
        return key.data

    def _data_key(self, key: ServerKeyState, cipher: str) -> DataChannelKey:
        key2 = key.tls.export_keying_material(EKM_LABEL.encode(), 256)
        return DataChannelKey(
            cipher=cipher,
            keys=client_data_keys(key2[128:] + key2[:128], cipher),
            key_id=key.key_id,
            peer_id=self.peer_id,
            compression=Compression.NONE,
            replay_window=ReplayWindow(),
        )
