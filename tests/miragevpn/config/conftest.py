"""Fixtures for config tests: a session PKI and a reader over an in-memory file table."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.helpers.pki import Pki, make_pki


@pytest.fixture(scope="session")
def pki() -> Pki:
    return make_pki()


@pytest.fixture
def files(pki: Pki) -> dict[str, bytes]:
    return {
        "ca.crt": pki.ca.cert_pem.encode(),
        "client.crt": pki.client.cert_pem.encode(),
        "client.key": pki.client.key_pem.encode(),
        "client-encrypted.key": pki.client_key_encrypted_pem.encode(),
        "ta.key": pki.ta_key.encode(),
        "v2cli.key": pki.tls_crypt_v2_client.encode(),
        "v2srv.key": pki.tls_crypt_v2_server.encode(),
        "server.crt": pki.server.cert_pem.encode(),
    }


@pytest.fixture
def read_file(files: dict[str, bytes]) -> Callable[[str], bytes]:
    def read(path: str) -> bytes:
        if path not in files:
            raise FileNotFoundError(2, "No such file or directory", path)
        return files[path]

    return read
