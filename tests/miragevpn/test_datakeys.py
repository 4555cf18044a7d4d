"""datakeys.py: PRF/EKM choice, key slots by key id, the send-key switch and the lame duck."""

from __future__ import annotations

import pytest

from miragevpn.config.model import Compression, ReplayWindow
from miragevpn.datakeys import DataChannelParams, DataKeys, derive_key2
from miragevpn.errors import LocalProtocolError
from miragevpn.kdf import EKM_LABEL, prf_key_expansion
from miragevpn.keymethod import ClientKeySource, ServerKeyMethod2

MINE = ClientKeySource(b"P" * 48, b"1" * 32, b"2" * 32)
THEIRS = ServerKeyMethod2(random1=b"r" * 32, random2=b"R" * 32, options="V4")
MY_SID, THEIR_SID = b"c" * 8, b"s" * 8


class Exporter:
    def __init__(self) -> None:
        self.calls: list[tuple[bytes, int]] = []

    def export_keying_material(self, label: bytes, length: int) -> bytes:
        self.calls.append((label, length))
        return bytes(range(length))


def params(cipher: str = "AES-256-GCM", peer_id: int | None = 7) -> DataChannelParams:
    return DataChannelParams.create(
        cipher=cipher,
        compression=Compression.NONE,
        peer_id=peer_id,
        replay_window=ReplayWindow(),
        ekm=True,
    )


def key2(n: int) -> bytes:
    return bytes([n]) * 256


def test_derive_key2_uses_ekm_or_the_prf() -> None:
    exporter = Exporter()
    kwargs = {
        "mine": MINE,
        "theirs": THEIRS,
        "my_session_id": MY_SID,
        "their_session_id": THEIR_SID,
    }
    assert derive_key2(exporter, ekm=True, **kwargs) == bytes(range(256))  # type: ignore[arg-type]
    assert exporter.calls == [(EKM_LABEL.encode(), 256)]
    prf = derive_key2(exporter, ekm=False, **kwargs)  # type: ignore[arg-type]
    assert len(exporter.calls) == 1
    assert prf == prf_key_expansion(
        client_pre_master=MINE.pre_master,
        client_random1=MINE.random1,
        client_random2=MINE.random2,
        server_random1=THEIRS.random1,
        server_random2=THEIRS.random2,
        client_session_id=MY_SID,
        server_session_id=THEIR_SID,
    )


def test_params_accept_aead_and_cbc_ciphers_but_not_blowfish() -> None:
    assert params("aes-128-gcm").cipher == "AES-128-GCM"
    assert params("aes-128-gcm").auth is None
    cbc = DataChannelParams.create(
        cipher="aes-256-cbc",
        compression=Compression.NONE,
        peer_id=None,
        replay_window=ReplayWindow(),
        ekm=False,
        auth="sha512",
    )
    assert (cbc.cipher, cbc.auth, cbc.is_aead) == ("AES-256-CBC", "SHA512", False)
    with pytest.raises(LocalProtocolError, match="data-ciphers-fallback"):
        params("BF-CBC")
    with pytest.raises(LocalProtocolError, match="not supported"):
        params("CAMELLIA-128-CBC")
    with pytest.raises(LocalProtocolError, match="needs a random source"):
        DataKeys(cbc, 0, key2(1))


def test_cbc_keys_rotate_like_aead_keys() -> None:
    cbc = DataChannelParams.create(
        cipher="AES-128-CBC",
        compression=Compression.NONE,
        peer_id=None,
        replay_window=ReplayWindow(),
        ekm=False,
        auth="SHA1",
    )
    counter = iter(range(1, 10_000))

    def rng(n: int) -> bytes:
        return bytes([next(counter) % 256]) * n

    keys = DataKeys(cbc, 0, key2(1), rng=rng)
    first = keys.send_key
    assert first is not None and first.cipher == "AES-128-CBC"
    packet = first.encrypt(b"hello")
    assert packet[0] == 0x30  # P_DATA_V1, key id 0 (no peer-id)
    keys.retire(must_die=100.0)
    keys.install(1, key2(2), send_from=0.0, now=1.0)
    second = keys.send_key
    assert second is not None and second.key_id == 1 and second is not first
    assert second.encrypt(b"x")[0] == 0x31


def test_first_key_receives_and_sends() -> None:
    keys = DataKeys(params(), 0, key2(1))
    assert keys.key_ids == frozenset({0})
    assert keys.send_key is keys.by_key_id[0] is keys.primary
    assert keys.next_deadline() is None
    wire = keys.send_key.encrypt(b"\x45abc")
    assert wire[0] == 0x48 and wire[1:4] == b"\x00\x00\x07"


def test_renegotiation_sends_on_the_lame_duck_until_send_from() -> None:
    keys = DataKeys(params(), 0, key2(1))
    old = keys.primary
    keys.retire(must_die=100.0)
    assert keys.lame_duck is old and keys.primary is None
    assert keys.send_key is old  # the only usable key meanwhile
    keys.install(1, key2(2), send_from=30.0, now=10.0)
    new = keys.by_key_id[1]
    assert keys.primary is new and keys.send_key is old
    assert keys.key_ids == frozenset({0, 1})
    assert keys.next_deadline() == 30.0
    assert keys.handle_timer(29.9) is None and keys.send_key is old
    assert keys.handle_timer(30.0) is None and keys.send_key is new
    assert keys.next_deadline() == 100.0
    assert keys.handle_timer(100.0) == 0  # the lame duck dies at tran-window
    assert keys.key_ids == frozenset({1}) and keys.lame_duck is None
    assert keys.next_deadline() is None


def test_install_after_send_from_switches_at_once() -> None:
    keys = DataKeys(params(), 0, key2(1))
    keys.retire(must_die=100.0)
    keys.install(1, key2(2), send_from=5.0, now=6.0)
    assert keys.send_key is keys.by_key_id[1]


def test_only_one_lame_duck_and_the_send_key_stays_usable() -> None:
    keys = DataKeys(params(), 0, key2(1))
    keys.retire(must_die=1000.0)
    keys.install(1, key2(2), send_from=60.0, now=10.0)  # still sending on key id 0
    keys.retire(must_die=1020.0)  # the next soft reset before the switch: 0 goes
    assert keys.key_ids == frozenset({1})
    assert keys.send_key is keys.by_key_id[1] is keys.lame_duck
    assert keys.switch_at is None


def test_lame_duck_dying_before_the_switch_sends_on_the_primary() -> None:
    keys = DataKeys(params(), 0, key2(1))
    keys.retire(must_die=20.0)
    keys.install(1, key2(2), send_from=60.0, now=10.0)
    assert keys.handle_timer(20.0) == 0
    assert keys.send_key is keys.by_key_id[1]


def test_lame_duck_dying_during_negotiation_leaves_nothing_to_send_with() -> None:
    keys = DataKeys(params(), 0, key2(1))
    keys.retire(must_die=20.0)
    assert keys.handle_timer(20.0) == 0
    assert keys.send_key is None
    assert keys.encrypt_ping() is None and keys.encrypt_occ_exit() is None
