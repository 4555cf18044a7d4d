"""One key state: its reliable control channel, its TLS session and its key-method-2 exchange.

A key state exists per key id (0 for the hard-reset session, 1..7 for renegotiations). It
turns control packets in (already unwrapped, session ids checked by the client) into TLS
records and control-channel text, and queues its own reliable messages (reset, TLS records
chopped to fit `tls-mtu`). Phases, each with its own data:

    AwaitingReset  our reset is queued; the peer's reset (sequence number 0) not seen yet
    TlsHandshake   TLS records flow; when the handshake completes our key-method-2 goes out
    AwaitingTheirs our key-method-2 sent; waiting for the server's
    Negotiated     both key-method-2 messages known; control text flows

`receive` returns what the packet changed (`Received`: control messages, and whether the TLS
handshake or the key-method-2 exchange completed in this call); nothing is left to poll.

OpenVPN: ssl.c (`tls_process`, `key_method_2_write/read`), ssl_pkt.c (`write_control_auth`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .compression import advertised_algorithms
from .config.model import AllowCompression, Compression, Config, TlsAuth, Transport
from .errors import DecodeError, RemoteProtocolError
from .keymethod import (
    IV_PROTO_CC_EXIT_NOTIFY,
    IV_PROTO_DATA_V2,
    IV_PROTO_DYN_TLS_CRYPT,
    IV_PROTO_REQUEST_PUSH,
    IV_PROTO_TLS_KEY_EXPORT,
    MAX_KEY_METHOD_2_MESSAGE,
    ClientKeySource,
    ServerKeyMethod2,
    build_options_string,
    build_peer_info,
    decode_server_key_method_2,
    encode_client_key_method_2,
    server_key_method_2_length,
)
from .messages import split_control_messages
from .packet import (
    ACK_V1_MAX_ACKS,
    EARLY_NEG_FLAG_RESEND_WKC,
    ControlPacket,
    Opcode,
    early_negotiation_flags,
)
from .reliable import ReliableChannel
from .tls import TlsSession

# IV_PROTO bits we implement (reference §4.4): a PRF-only client leaves out TLS_KEY_EXPORT and
# DYN_TLS_CRYPT (a 2.6 client announces both exactly when it can export keying material).
IV_PROTO_PRF_ONLY = IV_PROTO_DATA_V2 | IV_PROTO_REQUEST_PUSH | IV_PROTO_CC_EXIT_NOTIFY  # 134
IV_PROTO = IV_PROTO_PRF_ONLY | IV_PROTO_TLS_KEY_EXPORT | IV_PROTO_DYN_TLS_CRYPT  # 654
IV_VER = "2.6.0"  # informational for the server; we speak 2.6's protocol
IV_MTU = 1600  # the largest tun MTU we accept; what a 2.6 client sends (reference §4.4)


def _decompressed_algorithms(config: Config) -> tuple[str, ...]:
    """What we tell the server we decompress: nothing with allow-compression no or a stub
    configured (2.6's COMP_F_ADVERTISE_STUBS_ONLY), else what the installed libraries do."""
    if config.allow_compression is AllowCompression.NO or config.compression in (
        Compression.STUB,
        Compression.STUB_V2,
    ):
        return ()
    return advertised_algorithms()


def client_key_method_2(
    config: Config,
    rng: Callable[[int], bytes],
    transport: Transport,
    *,
    username: str | None,
    password: bytes | None,
    tls_ekm: bool,
) -> tuple[bytes, ClientKeySource]:
    """Our key-method-2 message for one key state, with fresh randoms (reference §4.2-§4.4):
    the options string of a 2.6 client, and peer-info announcing only what we implement."""
    protection = config.tls_protection
    tls_auth = isinstance(protection, TlsAuth)
    cipher = config.cipher.upper() if config.cipher else None
    if cipher not in [c.upper() for c in config.data_ciphers]:
        cipher = None  # 2.6 announces `cipher` only if it is in data-ciphers (reference §4.3)
    options = build_options_string(
        cipher=cipher,
        auth=config.auth,
        tun_mtu=config.tun_mtu,
        transport=transport,
        compression=config.compression is not Compression.NONE,
        tls_auth=tls_auth,
        key_direction=protection.direction if isinstance(protection, TlsAuth) else None,
    )
    peer_info = build_peer_info(
        version=IV_VER,
        platform="linux",
        ciphers=[c.upper() for c in config.data_ciphers],
        iv_proto=IV_PROTO if tls_ekm else IV_PROTO_PRF_ONLY,
        mtu=IV_MTU,
        compression_algorithms=_decompressed_algorithms(config),
    )
    source = ClientKeySource.from_rng(rng)
    message = encode_client_key_method_2(
        source,
        options=options,
        username=username,
        password=password if username is not None else None,
        peer_info=peer_info,
    )
    return message, source


@dataclass(slots=True)
class AwaitingReset:
    pass


@dataclass(slots=True)
class TlsHandshake:
    pass


@dataclass(slots=True)
class AwaitingTheirs:
    buffer: bytearray  # TLS plaintext of the server's key-method-2 so far


@dataclass(frozen=True, slots=True)
class Negotiated:
    their_key_method: ServerKeyMethod2


Phase = AwaitingReset | TlsHandshake | AwaitingTheirs | Negotiated


@dataclass(frozen=True, slots=True)
class Received:
    """What one control packet did to a key state."""

    messages: tuple[str, ...] = ()  # complete control messages that became readable
    tls_completed: bool = False  # the TLS handshake completed with this packet
    negotiated: bool = False  # the key-method-2 exchange completed with this packet


class KeyState:
    """The control channel of one key id (see module doc)."""

    def __init__(
        self,
        *,
        key_id: int,
        tls: TlsSession,
        reset_opcode: Opcode,
        my_key_method: bytes,
        key_source: ClientKeySource,
        tls_timeout: float,
        payload_size: int,
        wkc_overhead: int,
        started: float,
        ack_packet_max_acks: int = ACK_V1_MAX_ACKS,
    ) -> None:
        self.key_id = key_id
        self.tls = tls
        self.reliable = ReliableChannel(
            key_id=key_id, tls_timeout=tls_timeout, ack_packet_max_acks=ack_packet_max_acks
        )
        self.phase: Phase = AwaitingReset()
        self.started = started
        self.key_source = key_source
        self._my_key_method = my_key_method
        self._payload_size = payload_size
        self._wkc_overhead = wkc_overhead
        self._resend_wkc = False
        self._text = bytearray()
        self.reliable.send(reset_opcode, b"")

    # ------------------------------------------------------------------ receiving

    def receive(self, packet: ControlPacket, now: float) -> Received:
        """Process one unwrapped control packet of this key id: the messages that became
        readable and the steps completed. Raises `DecodeError`, `ServerCertificateRejected`
        or `RemoteProtocolError` (`TlsAlertReceived`) when the key state cannot go on."""
        messages: list[str] = []
        was_complete = self.tls.handshake_complete
        was_negotiated = self.is_negotiated
        for opcode, payload in self.reliable.receive(packet, now):
            if opcode in (Opcode.P_CONTROL_HARD_RESET_SERVER_V2, Opcode.P_CONTROL_SOFT_RESET_V1):
                self._their_reset(opcode, payload)
            elif opcode in (Opcode.P_CONTROL_V1, Opcode.P_CONTROL_WKC_V1):
                if isinstance(self.phase, AwaitingReset):
                    raise RemoteProtocolError("TLS records before the server's reset")
                self.tls.receive_records(payload)
                messages += self._after_tls_input()
            else:
                raise RemoteProtocolError(f"unexpected {opcode.name} on key id {self.key_id}")
        self._flush_tls()
        return Received(
            messages=tuple(messages),
            tls_completed=self.tls.handshake_complete and not was_complete,
            negotiated=self.is_negotiated and not was_negotiated,
        )

    def _their_reset(self, opcode: Opcode, payload: bytes) -> None:
        if not isinstance(self.phase, AwaitingReset):
            return  # a second reset with a new sequence number: nothing to do
        if opcode is Opcode.P_CONTROL_HARD_RESET_SERVER_V2 and payload:
            self._resend_wkc = bool(early_negotiation_flags(payload) & EARLY_NEG_FLAG_RESEND_WKC)
        self.phase = TlsHandshake()

    def _after_tls_input(self) -> list[str]:
        if isinstance(self.phase, TlsHandshake) and self.tls.handshake_complete:
            self.tls.write_application_data(self._my_key_method)
            self.phase = AwaitingTheirs(bytearray())
        plaintext = self.tls.read_application_data()
        if not plaintext:
            return []
        if isinstance(self.phase, AwaitingTheirs):
            self.phase.buffer += plaintext
            buffer = bytes(self.phase.buffer)
            used = server_key_method_2_length(buffer)
            if used is None:
                if len(buffer) > MAX_KEY_METHOD_2_MESSAGE:
                    raise DecodeError("server key-method-2 message too long")
                return []
            self.phase = Negotiated(decode_server_key_method_2(buffer[:used]))
            plaintext = buffer[used:]
        self._text += plaintext
        return split_control_messages(self._text)

    # ------------------------------------------------------------------ sending

    def send_text(self, data: bytes) -> None:
        """Write one control message (already NUL-terminated) as one TLS record."""
        self.tls.write_application_data(data)
        self._flush_tls()

    def _flush_tls(self) -> None:
        """Queue the TLS bytes waiting to go out as reliable P_CONTROL_V1 chunks."""
        if isinstance(self.phase, AwaitingReset):
            return  # hold the ClientHello until the server's reset (2.6 HMAC cookie, §1.8)
        records = self.tls.outgoing_records()
        position = 0
        while position < len(records):
            opcode = Opcode.P_CONTROL_V1
            size = self._payload_size
            if self._resend_wkc and self.reliable.my_next_sequence_number == 1:
                opcode, size = Opcode.P_CONTROL_WKC_V1, size - self._wkc_overhead
            self.reliable.send(opcode, records[position : position + size])
            position += size

    @property
    def is_negotiated(self) -> bool:
        return isinstance(self.phase, Negotiated)

    @property
    def their_key_method(self) -> ServerKeyMethod2:
        if not isinstance(self.phase, Negotiated):
            raise RemoteProtocolError("server key-method-2 not received yet")
        return self.phase.their_key_method
