"""The data keys of one session: which key decrypts a packet, which key we send with.

The crypto itself lives in `kdf.py` (key2, its slicing), `datachannel.py` (one key's AEAD
packets) and `cbcchannel.py` (one key's CBC+HMAC packets); this module is the client's glue
around them:

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

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .cbc import CBC_KEY_SIZES, DIGEST_SIZES
from .cbcchannel import SUPPORTED_CBC_CIPHERS, SUPPORTED_DIGESTS, CbcDataChannelKey
from .compression import Decompression
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
from .kdf import EKM_LABEL, EKM_LENGTH, client_cbc_keys, client_data_keys, prf_key_expansion
from .keymethod import ClientKeySource, ServerKeyMethod2

KEY_IDS = 8  # the key id is 3 bits (packet.py: KEY_ID_MASK)
# 2.6 refuses it without `--providers legacy`; we never implement it (64-bit blocks, SWEET32)
BLOWFISH = "BF-CBC"

DataKey = DataChannelKey | CbcDataChannelKey


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
    """What every key of a session shares, fixed by the PUSH_REPLY. `auth` is the HMAC digest
    of a CBC cipher (None for AEAD ciphers, which have no separate HMAC). `decompression`:
    what compressed packets the keys undo (compression.py; None refuses them).
    `dynamic_tls_crypt`: the control channel of later key states goes under the session's
    dynamic tls-crypt key (dyncrypt.py), made with key id 0's data keys."""

    cipher: str
    compression: Compression
    peer_id: int | None
    replay_window: ReplayWindowSettings
    ekm: bool
    auth: str | None = None
    decompression: Decompression | None = None
    dynamic_tls_crypt: bool = False

    @property
    def is_aead(self) -> bool:
        return self.auth is None

    @classmethod
    def create(
        cls,
        *,
        cipher: str,
        compression: Compression,
        peer_id: int | None,
        replay_window: ReplayWindowSettings,
        ekm: bool,
        auth: str = "SHA1",
        decompression: Decompression | None = None,
        dynamic_tls_crypt: bool = False,
    ) -> DataChannelParams:
        """LocalProtocolError for a cipher or digest we do not implement, RemoteProtocolError
        for a peer-id the server should not have pushed. `auth` counts for CBC ciphers only
        (OpenVPN's default SHA1; it is never pushed, both sides must configure the same)."""
        name = cipher.upper()
        if peer_id is not None and not 0 <= peer_id <= MAX_PEER_ID:
            raise RemoteProtocolError(f"the server pushed peer-id {peer_id}, beyond {MAX_PEER_ID}")
        if name in SUPPORTED_AEAD_CIPHERS:
            return cls(
                name,
                compression,
                peer_id,
                replay_window,
                ekm,
                None,
                decompression,
                dynamic_tls_crypt,
            )
        if name == BLOWFISH:
            raise LocalProtocolError(
                "data cipher BF-CBC (Blowfish, 64-bit blocks) is not supported: ask for a "
                "modern server config, or set data-ciphers-fallback to a cipher the server "
                "also accepts (e.g. AES-256-CBC)"
            )
        if name not in SUPPORTED_CBC_CIPHERS:
            supported = ", ".join(SUPPORTED_AEAD_CIPHERS + SUPPORTED_CBC_CIPHERS)
            raise LocalProtocolError(f"data cipher {cipher} is not supported ({supported})")
        digest = auth.upper()
        if digest not in SUPPORTED_DIGESTS:
            raise LocalProtocolError(f"HMAC digest {auth} (auth) is not supported")
        return cls(
            name, compression, peer_id, replay_window, ekm, digest, decompression, dynamic_tls_crypt
        )

    def key(self, key_id: int, key2: bytes, rng: Callable[[int], bytes] | None = None) -> DataKey:
        """One key state's data key; CBC needs `rng` for its per-packet IVs."""
        if self.auth is None:
            return DataChannelKey(
                cipher=self.cipher,
                keys=client_data_keys(key2, self.cipher),
                key_id=key_id,
                peer_id=self.peer_id,
                compression=self.compression,
                replay_window=self.replay_window,
                decompression=self.decompression,
            )
        if rng is None:
            raise LocalProtocolError("a CBC data channel needs a random source for its IVs")
        return CbcDataChannelKey(
            cipher=self.cipher,
            auth=self.auth,
            keys=client_cbc_keys(
                key2, key_size=CBC_KEY_SIZES[self.cipher], hmac_size=DIGEST_SIZES[self.auth]
            ),
            key_id=key_id,
            peer_id=self.peer_id,
            compression=self.compression,
            replay_window=self.replay_window,
            rng=rng,
            decompression=self.decompression,
        )


class DataKeys:
    """The session's data keys by key id (see the module doc)."""

    __slots__ = (
        "by_key_id",
        "lame_duck",
        "lame_duck_dies",
        "params",
        "primary",
        "rng",
        "send_key",
        "switch_at",
    )

    def __init__(
        self,
        params: DataChannelParams,
        key_id: int,
        key2: bytes,
        *,
        rng: Callable[[int], bytes] | None = None,
    ) -> None:
        self.params = params
        self.rng = rng
        key = params.key(key_id, key2, rng)
        self.by_key_id: list[DataKey | None] = [None] * KEY_IDS
        self.by_key_id[key_id] = key
        self.primary: DataKey | None = key
        self.send_key: DataKey | None = key
        self.lame_duck: DataKey | None = None
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
        key = self.params.key(key_id, key2, self.rng)
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
