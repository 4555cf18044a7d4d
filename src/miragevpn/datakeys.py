"""The data keys of one session: which key decrypts a packet, which key we send with.

The crypto itself lives in `kdf.py` (key2, its slicing) and `datachannel.py` (one key's AEAD
packets); this module is the client's glue around them:

- `derive_key2`: TLS-EKM when the server pushed `tls-ekm` (and we announced it), else
  OpenVPN's PRF from the key-method-2 randoms and the session ids (reference §5).
- `DataKeys`: the key slots of a session (ssl_common.h: KS_PRIMARY, KS_LAME_DUCK). Receiving
  picks a key by the packet's key id (`by_key_id`, 8 slots); sending uses `send_key`.

Rotation (reference §8; ssl.c: key_state_soft_reset, tls_select_encryption_key):

    retire(must_die)          a soft reset began: the primary becomes the lame duck, usable
                              both ways until must_die (= now + tran-window); the previous lame
                              duck is dropped (only one per session)
    install(kid, key2, send_from)
                              the new key state negotiated: it becomes the primary; we go on
                              sending with the lame duck until `send_from` (the new key state's
                              start + min(hand-window, reneg-sec / 2): OpenVPN's
                              auth_deferred_expire), unless there is no lame duck to send with
    handle_timer(now)         the send switch and the lame duck's death happen here, so the
                              per-packet path never looks at a clock
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .config.model import Compression
from .config.model import ReplayWindow as ReplayWindowSettings
from .datachannel import (
    MAX_PEER_ID,
    OCC_EXIT_MESSAGE,
    PING_MAGIC,
    SUPPORTED_AEAD_CIPHERS,
    DataChannelKey,
)
from .errors import LocalProtocolError, RemoteProtocolError
from .kdf import EKM_LABEL, EKM_LENGTH, client_data_keys, prf_key_expansion
from .keymethod import ClientKeySource, ServerKeyMethod2

KEY_IDS = 8  # the key id is 3 bits (packet.py: KEY_ID_MASK)


class KeyingMaterialExporter(Protocol):
    def export_keying_material(self, label: bytes, length: int) -> bytes: ...


def derive_key2(
    tls: KeyingMaterialExporter,
    *,
    ekm: bool,
    mine: ClientKeySource,
    theirs: ServerKeyMethod2,
    my_session_id: bytes,
    their_session_id: bytes,
) -> bytes:
    """The 256-byte key2 of one negotiated key state (reference §5.2, §5.3)."""
    if ekm:
        return tls.export_keying_material(EKM_LABEL.encode("ascii"), EKM_LENGTH)
    return prf_key_expansion(
        client_pre_master=mine.pre_master,
        client_random1=mine.random1,
        client_random2=mine.random2,
        server_random1=theirs.random1,
        server_random2=theirs.random2,
        client_session_id=my_session_id,
        server_session_id=their_session_id,
    )


@dataclass(frozen=True, slots=True)
class DataChannelParams:
    """What every key of a session shares, fixed by the PUSH_REPLY."""

    cipher: str
    compression: Compression
    peer_id: int | None
    replay_window: ReplayWindowSettings
    ekm: bool

    @classmethod
    def create(
        cls,
        *,
        cipher: str,
        compression: Compression,
        peer_id: int | None,
        replay_window: ReplayWindowSettings,
        ekm: bool,
    ) -> DataChannelParams:
        """LocalProtocolError for a cipher we do not implement, RemoteProtocolError for a
        peer-id the server should not have pushed."""
        name = cipher.upper()
        if name not in SUPPORTED_AEAD_CIPHERS:
            raise LocalProtocolError(f"data cipher {cipher} is not supported (AEAD only)")
        if peer_id is not None and not 0 <= peer_id <= MAX_PEER_ID:
            raise RemoteProtocolError(f"the server pushed peer-id {peer_id}, beyond {MAX_PEER_ID}")
        return cls(name, compression, peer_id, replay_window, ekm)

    def key(self, key_id: int, key2: bytes) -> DataChannelKey:
        return DataChannelKey(
            cipher=self.cipher,
            keys=client_data_keys(key2, self.cipher),
            key_id=key_id,
            peer_id=self.peer_id,
            compression=self.compression,
            replay_window=self.replay_window,
        )


class DataKeys:
    """The session's data keys by key id (see the module doc)."""

    __slots__ = (
        "by_key_id",
        "lame_duck",
        "lame_duck_dies",
        "params",
        "primary",
        "send_key",
        "switch_at",
    )

    def __init__(self, params: DataChannelParams, key_id: int, key2: bytes) -> None:
        self.params = params
        key = params.key(key_id, key2)
        self.by_key_id: list[DataChannelKey | None] = [None] * KEY_IDS
        self.by_key_id[key_id] = key
        self.primary: DataChannelKey | None = key
        self.send_key: DataChannelKey | None = key
        self.lame_duck: DataChannelKey | None = None
        self.lame_duck_dies: float | None = None
        self.switch_at: float | None = None  # send_key becomes the primary then

    @property
    def key_ids(self) -> frozenset[int]:
        return frozenset(k for k, key in enumerate(self.by_key_id) if key is not None)

    def retire(self, must_die: float) -> None:
        """A soft reset began: the primary becomes the (only) lame duck until `must_die`."""
        if self.lame_duck is not None:
            self.by_key_id[self.lame_duck.key_id] = None
        self.lame_duck, self.primary = self.primary, None
        self.lame_duck_dies = must_die if self.lame_duck is not None else None
        self.send_key, self.switch_at = self.lame_duck, None

    def install(self, key_id: int, key2: bytes, *, send_from: float, now: float) -> None:
        """The new primary's keys; we send with it from `send_from` (at once without a lame
        duck)."""
        key = self.params.key(key_id, key2)
        self.by_key_id[key_id] = key
        self.primary = key
        if self.send_key is None or now >= send_from:
            self.send_key, self.switch_at = key, None
        else:
            self.switch_at = send_from

    def next_deadline(self) -> float | None:
        if self.switch_at is None:
            return self.lame_duck_dies
        if self.lame_duck_dies is None:
            return self.switch_at
        return min(self.switch_at, self.lame_duck_dies)

    def handle_timer(self, now: float) -> int | None:
        """Switch sending to the primary when due; drop the lame duck at its death (its key
        id is returned, so the caller can drop its key state too)."""
        if self.switch_at is not None and now >= self.switch_at:
            self.send_key, self.switch_at = self.primary, None
        if self.lame_duck_dies is None or now < self.lame_duck_dies:
            return None
        dead = self.lame_duck
        assert dead is not None
        self.by_key_id[dead.key_id] = None
        self.lame_duck = self.lame_duck_dies = None
        if self.send_key is dead:
            self.send_key, self.switch_at = self.primary, None
        return dead.key_id

    def encrypt_ping(self) -> bytes | None:
        key = self.send_key
        return None if key is None else key.encrypt(PING_MAGIC)

    def encrypt_occ_exit(self) -> bytes | None:
        key = self.send_key
        return None if key is None else key.encrypt(OCC_EXIT_MESSAGE)
