"""Micro-benchmark of the data-channel hot path (not a test): packets/s for encrypt and decrypt.

    .venv/bin/python bench/datachannel_micro.py [--seconds 1.0] [--backend all|cffi|...]

For each cipher and payload size (64 B, 1400 B) it times `DataChannelKey.encrypt` on the
client and `DataChannelKey.decrypt` of those packets on a mirrored server key (P_DATA_V2, no
compression framing), and prints packets/s, µs per packet and Mbit/s of payload, with the AEAD
backend (aead.py) in use: the one selected at import, or each available one with `all`.
Beside them, the legacy CBC+HMAC rows (cbcchannel.py: AES-256-CBC/SHA256, AES-128-CBC/SHA1)
with cbc.py's backend, measured the same way.

Each row names the stack it ran on (Python and cryptography versions) after a header with the
exact versions, so `make bench-micro`, which runs it on both stacks `make test` tests, shows a
slow path on one of them (e.g. aead falling back to the plain cryptography API) side by side.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.helpers.stack import describe  # noqa: E402

from miragevpn import aead, cbc, cbcchannel, datachannel  # noqa: E402
from miragevpn.cbcchannel import CbcDataChannelKey  # noqa: E402
from miragevpn.config.model import Compression, ReplayWindow  # noqa: E402
from miragevpn.datachannel import SUPPORTED_AEAD_CIPHERS, DataChannelKey  # noqa: E402
from miragevpn.kdf import (  # noqa: E402
    CbcKeys,
    DataChannelKeys,
    client_cbc_keys,
    client_data_keys,
)

SIZES = (64, 1400)
CBC_ROWS = (("AES-256-CBC", "SHA256"), ("AES-128-CBC", "SHA1"))
Key = DataChannelKey | CbcDataChannelKey
# e.g. "py3.11 cg38.0.4": which stack a row comes from (Python and cryptography versions)
_PYTHON = ".".join(platform.python_version_tuple()[:2])
STACK = f"py{_PYTHON} cg{importlib.metadata.version('cryptography')}"


def _pair(cipher: str) -> tuple[DataChannelKey, DataChannelKey]:
    keys = client_data_keys(bytes(range(256)), cipher)
    mirrored = DataChannelKeys(
        keys.their_cipher_key, keys.their_implicit_iv, keys.my_cipher_key, keys.my_implicit_iv
    )

    def make(k: DataChannelKeys) -> DataChannelKey:
        return DataChannelKey(
            cipher=cipher,
            keys=k,
            key_id=1,
            peer_id=7,
            compression=Compression.NONE,
            replay_window=ReplayWindow(),
        )

    return make(keys), make(mirrored)


def _cbc_pair(cipher: str, auth: str, backend: str) -> tuple[Key, Key]:
    def make_box(c: str, a: str, key: bytes, hmac_key: bytes) -> cbc.CbcHmac:
        return cbc.make_cbc_hmac(c, a, key, hmac_key, backend=backend)

    cbcchannel.make_cbc_hmac = make_box  # type: ignore[assignment]  # bench only
    keys = client_cbc_keys(
        bytes(range(256)), key_size=cbc.CBC_KEY_SIZES[cipher], hmac_size=cbc.DIGEST_SIZES[auth]
    )
    mirrored = CbcKeys(
        keys.their_cipher_key, keys.their_hmac_key, keys.my_cipher_key, keys.my_hmac_key
    )
    iv = bytes(range(16))

    def rng(n: int) -> bytes:
        return iv[:n]  # a fixed IV: the bench times the crypto, not the random source

    def make(k: CbcKeys) -> CbcDataChannelKey:
        return CbcDataChannelKey(
            cipher=cipher,
            auth=auth,
            keys=k,
            key_id=1,
            peer_id=7,
            compression=Compression.NONE,
            replay_window=ReplayWindow(),
            rng=rng,
        )

    return make(keys), make(mirrored)


def _rate(n: int, elapsed: float, size: int) -> str:
    pps = n / elapsed
    return f"{pps:>10,.0f} pkt/s {1e6 / pps:>6.2f} µs {pps * size * 8 / 1e6:>6,.0f} Mbit/s"


def _use_backend(backend: str | None) -> None:
    """Make every DataChannelKey built from now on use `backend` (None: the selected one)."""

    def make(cipher: str, key: bytes) -> aead.Aead:
        return aead.make_aead(cipher, key, backend=backend)

    datachannel._make_aead = make  # bench only: the engine has no such switch


def _measure(
    cipher: str, size: int, backend: str, seconds: float, pair: tuple[Key, Key] | None = None
) -> None:
    client, server = pair or _pair(cipher)
    payload = bytes([0x45]) + bytes(size - 1)
    batch = 2000
    encrypt = client.encrypt
    n = 0
    packets: list[bytes] = []
    start = time.perf_counter()
    while True:
        for _ in range(batch):
            packets.append(encrypt(payload))
        n += batch
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            break
    enc = _rate(n, elapsed, size)
    decrypt = server.decrypt
    now = time.time()
    start = time.perf_counter()
    for packet in packets:
        decrypt(packet, now)
    dec = _rate(len(packets), time.perf_counter() - start, size)
    print(f"{STACK:<16} {cipher:<18} {size:>5} {backend:<12} {enc}  {dec}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    parser.add_argument(
        "--backend",
        choices=("selected", "all", *aead.BACKENDS),
        default="selected",
        help="AEAD backend: the one aead.py selected (default), each available one, or one",
    )
    args = parser.parse_args()
    for line in describe():
        print(f"# {line}")
    print(
        f"{'stack':<16} {'cipher':<18} {'size':>5} {'backend':<12} {'encrypt':<38} {'decrypt':<38}"
    )
    for cipher in SUPPORTED_AEAD_CIPHERS:
        if args.backend == "selected":
            backends = [aead.selected_backend(cipher)]
        elif args.backend == "all":
            backends = [b for b in aead.BACKENDS if aead.backend_available(b, cipher)]
        else:
            backends = [args.backend]
        for size in SIZES:
            for backend in backends:
                _use_backend(backend)
                _measure(cipher, size, backend, args.seconds)
    for cipher, auth in CBC_ROWS:
        if args.backend in ("selected", *aead.BACKENDS):
            cbc_backends = [cbc.selected_backend(cipher)]
        else:
            cbc_backends = [b for b in cbc.BACKENDS if cbc.backend_available(b, cipher)]
        for size in SIZES:
            for backend in cbc_backends:
                label = f"{cipher}/{auth}"
                _measure(label, size, backend, args.seconds, _cbc_pair(cipher, auth, backend))


if __name__ == "__main__":
    main()
