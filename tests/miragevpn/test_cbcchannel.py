"""cbcchannel.py: CBC+HMAC data packets (P_DATA_V1/V2), decoded by hand from the reference
layout (§6.3), replay, framing, key2 slicing (§5.1)."""

from __future__ import annotations

import hmac
import itertools
import struct

import lzo
import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from miragevpn.cbcchannel import SUPPORTED_CBC_CIPHERS, CbcDataChannelKey, cbc_overhead
from miragevpn.compression import Decompression
from miragevpn.config.model import Compression, ReplayWindow
from miragevpn.datachannel import PING_MAGIC
from miragevpn.errors import AuthenticationError, DecodeError, ReplayError
from miragevpn.kdf import CbcKeys, client_cbc_keys, split_cbc_keys

KEY2 = bytes((i * 7 + 3) % 256 for i in range(256))
NOW = 1000.0


def counting_rng() -> object:
    counter = itertools.count(1)
    return lambda n: bytes([next(counter) % 256]) * n


def pair(
    cipher: str = "AES-256-CBC",
    auth: str = "SHA256",
    *,
    peer_id: int | None = 5,
    compression: Compression = Compression.NONE,
    decompression: Decompression | None = None,
) -> tuple[CbcDataChannelKey, CbcDataChannelKey]:
    sizes = {"AES-128-CBC": 16, "AES-192-CBC": 24, "AES-256-CBC": 32}
    digest = {"SHA1": 20, "SHA256": 32, "SHA384": 48, "SHA512": 64}[auth]
    mine = client_cbc_keys(KEY2, key_size=sizes[cipher], hmac_size=digest)
    theirs = CbcKeys(
        mine.their_cipher_key, mine.their_hmac_key, mine.my_cipher_key, mine.my_hmac_key
    )

    def make(keys: CbcKeys, pid: int | None) -> CbcDataChannelKey:
        return CbcDataChannelKey(
            cipher=cipher,
            auth=auth,
            keys=keys,
            key_id=2,
            peer_id=pid,
            compression=compression,
            replay_window=ReplayWindow(),
            rng=counting_rng(),  # type: ignore[arg-type]
            decompression=decompression,
        )

    return make(mine, peer_id), make(theirs, peer_id)


def test_client_slices_follow_the_key2_layout() -> None:
    keys = client_cbc_keys(KEY2, key_size=32, hmac_size=20)
    assert keys.my_cipher_key == KEY2[0:32] and keys.my_hmac_key == KEY2[64:84]
    assert keys.their_cipher_key == KEY2[128:160] and keys.their_hmac_key == KEY2[192:212]
    inverse = split_cbc_keys(KEY2, key_size=16, hmac_size=64, my_slot=1, their_slot=0)
    assert inverse.my_cipher_key == KEY2[128:144] and inverse.their_hmac_key == KEY2[64:128]
    assert "redacted" in repr(keys)
    with pytest.raises(ValueError):
        client_cbc_keys(KEY2[:100], key_size=16, hmac_size=20)


def test_v2_packet_decoded_by_hand() -> None:
    client, _ = pair(peer_id=0x010203)
    packet = client.encrypt(b"\x45hello")
    assert packet[:4] == bytes([0x48 | 2, 0x01, 0x02, 0x03])
    keys = client_cbc_keys(KEY2, key_size=32, hmac_size=32)
    mac, iv, ciphertext = packet[4:36], packet[36:52], packet[52:]
    assert iv == bytes([1]) * 16  # from the rng
    assert hmac.compare_digest(mac, hmac.digest(keys.my_hmac_key, iv + ciphertext, "sha256"))
    decryptor = Cipher(algorithms.AES(keys.my_cipher_key), modes.CBC(iv)).decryptor()
    unpadder = padding.PKCS7(128).unpadder()
    plain = unpadder.update(decryptor.update(ciphertext) + decryptor.finalize())
    plain += unpadder.finalize()
    assert plain == struct.pack("!I", 1) + b"\x45hello"
    assert len(packet) <= len(b"\x45hello") + cbc_overhead(peer_id=True, auth="SHA256")


def test_a_hand_built_server_packet_is_accepted_v1() -> None:
    client, _ = pair("AES-128-CBC", "SHA1", peer_id=None)
    keys = client_cbc_keys(KEY2, key_size=16, hmac_size=20)
    iv = bytes(range(16))
    padder = padding.PKCS7(128).padder()
    padded = padder.update(struct.pack("!I", 7) + b"tunnel") + padder.finalize()
    encryptor = Cipher(algorithms.AES(keys.their_cipher_key), modes.CBC(iv)).encryptor()
    body = iv + encryptor.update(padded) + encryptor.finalize()
    packet = bytes([0x30 | 2]) + hmac.digest(keys.their_hmac_key, body, "sha1") + body
    assert client.decrypt(packet, NOW) == b"tunnel"
    with pytest.raises(ReplayError):
        client.decrypt(packet, NOW)
    assert client.encrypt(b"x")[0] == 0x30 | 2  # no peer-id: P_DATA_V1


def test_an_lzo_compressed_packet_is_decompressed() -> None:
    """comp-lzo: 0x66 || LZO1X, inside the CBC envelope like any framed payload."""

    decompression = Decompression(1632)
    sender, _ = pair(compression=Compression.NONE)  # frames nothing: the test writes the byte
    _, receiver = pair(compression=Compression.LZO, decompression=decompression)
    payload = b"\x45" + b"z" * 1200
    wire = sender.encrypt(b"\x66" + lzo.compress(payload, 1, False))
    assert len(wire) < 200
    assert receiver.decrypt(wire, NOW) == payload
    assert decompression.stats.packets == 1


def test_receiving_checks_hmac_then_replay_then_framing() -> None:
    client, server = pair(compression=Compression.LZO_NO)
    first = client.encrypt(b"one")
    second = client.encrypt(PING_MAGIC)
    assert server.decrypt(second, NOW) == PING_MAGIC  # out of order is fine
    forged = bytearray(first)
    forged[-1] ^= 0x80
    with pytest.raises(AuthenticationError):
        server.decrypt(bytes(forged), NOW)
    assert server.decrypt(first, NOW) == b"one"
    v1 = bytes([0x30 | 2]) + first[4:]  # V1 and V2 both accepted, header unauthenticated
    with pytest.raises(ReplayError):
        server.decrypt(v1, NOW)
    with pytest.raises(DecodeError):
        server.decrypt(bytes([0x48 | 3]) + first[1:], NOW)  # another key id
    with pytest.raises(DecodeError):
        server.decrypt(b"", NOW)
    assert (server.packets_received, server.bytes_received) == (2, 3 + 16)
    assert (client.packets_sent, client.bytes_sent) == (2, 3 + 16)
    assert not client.should_renegotiate


def test_a_payload_of_only_a_replay_id_is_malformed() -> None:
    client, server = pair()
    with pytest.raises(ValueError):
        client.encrypt(b"")
    keys = client_cbc_keys(KEY2, key_size=32, hmac_size=32)
    iv = bytes(16)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(struct.pack("!I", 1)) + padder.finalize()
    encryptor = Cipher(algorithms.AES(keys.my_cipher_key), modes.CBC(iv)).encryptor()
    body = iv + encryptor.update(padded) + encryptor.finalize()
    packet = bytes([0x30 | 2]) + hmac.digest(keys.my_hmac_key, body, "sha256") + body
    with pytest.raises(DecodeError, match="missing payload"):
        server.decrypt(packet, NOW)


def test_bad_construction_is_refused() -> None:
    keys = client_cbc_keys(KEY2, key_size=32, hmac_size=20)
    common = {
        "keys": keys,
        "peer_id": None,
        "compression": Compression.NONE,
        "replay_window": ReplayWindow(),
        "rng": counting_rng(),
    }
    with pytest.raises(ValueError, match="unsupported CBC"):
        CbcDataChannelKey(cipher="AES-256-GCM", auth="SHA1", key_id=0, **common)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="digest"):
        CbcDataChannelKey(cipher="AES-256-CBC", auth="WHIRLPOOL", key_id=0, **common)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="key id"):
        CbcDataChannelKey(cipher="AES-256-CBC", auth="SHA1", key_id=8, **common)  # type: ignore[arg-type]


@settings(max_examples=80, deadline=None)
@given(
    cipher=st.sampled_from(SUPPORTED_CBC_CIPHERS),
    auth=st.sampled_from(["SHA1", "SHA256", "SHA384", "SHA512"]),
    peer_id=st.one_of(st.none(), st.integers(0, 0xFFFFFF)),
    compression=st.sampled_from(list(Compression)),
    payloads=st.lists(st.binary(min_size=1, max_size=300), max_size=5),
)
def test_round_trip_both_ways(
    cipher: str,
    auth: str,
    peer_id: int | None,
    compression: Compression,
    payloads: list[bytes],
) -> None:
    client, server = pair(cipher, auth, peer_id=peer_id, compression=compression)
    for payload in payloads:
        assert server.decrypt(client.encrypt(payload), NOW) == payload
        assert client.decrypt(server.encrypt(payload), NOW) == payload
