"""Dynamic tls-crypt: the control channel of renegotiations under a key of this session.

What OpenVPN 2.6.14 does (ssl.c, ssl_ncp.c, multi.c, push.c, ssl_pkt.h, tls_crypt.c):
- a 2.6 client announces IV_PROTO_DYN_TLS_CRYPT (bit 9) whenever it can export TLS keying
  material (ssl.c: push_peer_info); a server seeing the bit pushes
  `protocol-flags ... dyn-tls-crypt` (multi.c, push.c) whatever its own control-channel
  wrapping is: none, tls-auth, tls-crypt or tls-crypt-v2;
- both sides make the key once per session, with the data keys of key id 0 (ssl.c:
  tls_session_update_crypto_params_do_work, only while key id 0 is the primary; the client does
  it on the PUSH_REPLY): K = TLS-EKM(label "EXPORTER-OpenVPN-dynamic-tls-crypt", no context,
  256 bytes) of key id 0's TLS session, XOR the 256 bytes of the configured tls-crypt or
  tls-auth key file or tls-crypt-v2 client key Kc; without wrapping there is nothing to XOR
  (tls_crypt.c: tls_session_generate_dynamic_tls_crypt_key, xor_key2);
- K is a tls-crypt key (AES-256-CTR + HMAC-SHA256; the server NORMAL, the client INVERSE) with
  its own long-form replay counter from 1 and its own replay window (packet_id_init);
- from then on every control packet with key id > 0, both ways (soft resets, TLS records,
  acks), is wrapped with K; key id 0 keeps the configured wrapping (ssl_pkt.h:
  tls_session_get_tls_wrap). A renegotiation packet under the configured key no longer
  authenticates, so a static tls-crypt key that leaked later cannot be used to inject into
  renegotiations. A new session (hard reset) starts again with the configured wrapping only.
"""

from __future__ import annotations

from .config.model import KeyDirection, Secret, StaticKey, TlsAuth, TlsCrypt, TlsCryptV2
from .config.model import ReplayWindow as ReplayWindowSettings
from .packet import KEY_ID_MASK, ControlPacket
from .tls_wrap import ControlChannelWrap, TlsCryptWrap

__all__ = [
    "DYNAMIC_TLS_CRYPT_LABEL",
    "DYNAMIC_TLS_CRYPT_LENGTH",
    "SessionWrap",
    "dynamic_tls_crypt_key",
]

DYNAMIC_TLS_CRYPT_LABEL = b"EXPORTER-OpenVPN-dynamic-tls-crypt"  # ssl_backend.h
DYNAMIC_TLS_CRYPT_LENGTH = 256  # sizeof(struct key2.keys): 2 * (cipher[64] + hmac[64])


def dynamic_tls_crypt_key(
    ekm: bytes, protection: TlsAuth | TlsCrypt | TlsCryptV2 | None
) -> StaticKey:
    """The session's dynamic tls-crypt key from the key id 0 exporter output `ekm`: XOR the
    configured wrapping's 256-byte key (the whole key file, whatever the tls-auth key
    direction), or `ekm` itself without wrapping."""
    if len(ekm) != DYNAMIC_TLS_CRYPT_LENGTH:
        raise ValueError(f"dynamic tls-crypt needs {DYNAMIC_TLS_CRYPT_LENGTH} exported bytes")
    if protection is None:
        return StaticKey(Secret(ekm))
    original = protection.key.key.value
    return StaticKey(Secret(bytes(a ^ b for a, b in zip(ekm, original, strict=True))))


class SessionWrap:
    """The control-channel wrapping of one session, chosen by key id (see the module doc):
    the configured wrap, and for key ids > 0 the dynamic tls-crypt wrap once `use_dynamic`
    made it. Wire packets are routed by the key id in their first byte."""

    __slots__ = ("configured", "dynamic")

    def __init__(self, configured: ControlChannelWrap) -> None:
        self.configured = configured
        self.dynamic: TlsCryptWrap | None = None

    def use_dynamic(
        self,
        key: StaticKey,
        *,
        direction: KeyDirection = KeyDirection.INVERSE,
        replay_window: ReplayWindowSettings,
    ) -> None:
        """From now on key ids > 0 go under `key` (tls-crypt, counter from 1, own window).
        `direction` NORMAL is the server's view, for tests."""
        if self.dynamic is not None:
            raise ValueError("the dynamic tls-crypt key is made once per session")
        self.dynamic = TlsCryptWrap(key, direction=direction, replay_window=replay_window)

    def for_key_id(self, key_id: int) -> ControlChannelWrap:
        if key_id > 0 and self.dynamic is not None:
            return self.dynamic
        return self.configured

    @property
    def overhead(self) -> int:
        """The configured wrap's overhead (key id 0); `for_key_id(k).overhead` for others."""
        return self.configured.overhead

    def wrap(self, packet: ControlPacket, wall_time: float) -> bytes:
        return self.for_key_id(packet.key_id).wrap(packet, wall_time)

    def unwrap(self, data: bytes, now: float) -> ControlPacket:
        key_id = data[0] & KEY_ID_MASK if data else 0
        return self.for_key_id(key_id).unwrap(data, now)
