"""Key material in configs (pkihandlers.py + resolve.py): `askpass FILE` with an encrypted key
or a protected PKCS#12 bundle, the bundle's CA as trust anchor without `ca` (file and inline),
and what is said when the passphrase is wrong or missing."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import pytest

from miragevpn.config import format_config, parse_config
from miragevpn.config.check import config_document, summary
from miragevpn.config.model import Config, Secret
from miragevpn.config.unlock import WRONG_BUNDLE, WRONG_KEY
from miragevpn.errors import ConfigError
from tests.helpers.pki import ENCRYPTED_KEY_PASSPHRASE, Pki

Reader = Callable[[str], bytes]
HEAD = "client\ndev tun\nremote vpn.example.org\nremote-cert-tls server\n"
RIGHT = Secret(ENCRYPTED_KEY_PASSPHRASE.encode())


@pytest.fixture
def reader(files: dict[str, bytes], pki: Pki) -> Reader:
    files |= {
        "client-trad.key": pki.client_key_encrypted_traditional_pem.encode(),
        "pass.txt": ENCRYPTED_KEY_PASSPHRASE.encode() + b"\n",
        "wrong.txt": b"not the passphrase\n",
        "user.p12": pki.client_p12,
        "user-protected.p12": pki.client_p12_protected,
    }

    def read(name: str) -> bytes:
        if name not in files:
            raise FileNotFoundError(2, "No such file or directory", name)
        return files[name]

    return read


def parse(text: str, read: Reader) -> Config:
    return parse_config(text, read_file=read)


def fails(text: str, read: Reader) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text, read)
    return info.value


def warnings(config: Config) -> list[str]:
    return [f"{w.line}: {w.directive}: {w.message}" for w in config.warnings]


@pytest.mark.parametrize("key", ["client-encrypted.key", "client-trad.key"])
def test_encrypted_key_with_askpass_file(key: str, reader: Reader) -> None:
    c = parse(HEAD + f"ca ca.crt\ncert client.crt\nkey {key}\naskpass pass.txt\n", reader)
    assert c.key_passphrase == RIGHT
    assert not any("encrypted" in w for w in warnings(c))
    error = fails(HEAD + f"ca ca.crt\ncert client.crt\nkey {key}\naskpass wrong.txt\n", reader)
    assert (error.line, error.directive, error.message) == (8, "askpass", WRONG_KEY)
    # the key is checked against the certificate once it is unlocked
    error = fails(HEAD + f"ca ca.crt\ncert server.crt\nkey {key}\naskpass pass.txt\n", reader)
    assert "does not belong to the client certificate" in error.message


@pytest.mark.parametrize("askpass", ["", "askpass\n", "askpass stdin\n"])
def test_encrypted_key_without_askpass_file_is_asked_for_at_run_time(
    askpass: str, reader: Reader
) -> None:
    c = parse(HEAD + "ca ca.crt\ncert client.crt\nkey client-encrypted.key\n" + askpass, reader)
    assert c.key_passphrase is None
    assert (
        "7: key: the private key is encrypted and there is no 'askpass FILE': miragevpn-client "
        "asks for the passphrase on its terminal; the gateway cannot ask (put the passphrase on "
        "the first line of a file and add 'askpass FILE')"
    ) in warnings(c)
    assert "certificate (encrypted: passphrase from a prompt at start)" in "\n".join(summary(c))


def test_askpass_errors_are_at_its_line(reader: Reader) -> None:
    base = HEAD + "ca ca.crt\ncert client.crt\nkey client-encrypted.key\n"
    error = fails(base + "askpass missing.txt\n", reader)
    assert (error.line, error.column, error.directive) == (8, 9, "askpass")
    assert "cannot read the askpass file 'missing.txt'" in error.message
    error = fails(base + "askpass a b\n", reader)
    assert error.line == 8 and "expects 0 to 1 arguments" in error.message
    error = fails(base + "<askpass>\nsecret\n</askpass>\n", reader)
    assert error.line == 8 and "cannot be given as an inline <askpass> block" in error.message
    error = fails(base + "askpass pass.txt\naskpass wrong.txt\n", reader)
    assert error.line == 9 and "askpass is given twice with different values" in error.message
    connection = "<connection>\nremote b\naskpass pass.txt\n</connection>\n"
    error = fails(base + connection, reader)
    assert error.line == 10 and "not allowed inside a <connection> block" in error.message


def test_askpass_without_anything_encrypted_is_a_warning(reader: Reader) -> None:
    c = parse(HEAD + "ca ca.crt\ncert client.crt\nkey client.key\naskpass pass.txt\n", reader)
    assert "8: askpass: nothing here is encrypted: the passphrase is unused" in warnings(c)


def test_protected_bundle_with_askpass_and_no_ca_trusts_the_bundles_ca(
    reader: Reader, pki: Pki
) -> None:
    c = parse(HEAD + "pkcs12 user-protected.p12\naskpass pass.txt\n", reader)
    assert c.ca == pki.ca.cert_pem and c.key_passphrase == RIGHT
    assert "server check: 1 CA certificate(s) from the PKCS#12 bundle" in "\n".join(summary(c))
    error = fails(HEAD + "pkcs12 user-protected.p12\naskpass wrong.txt\n", reader)
    assert (error.line, error.directive, error.message) == (6, "askpass", WRONG_BUNDLE)


def test_protected_bundle_without_askpass_is_unlocked_at_run_time(reader: Reader) -> None:
    c = parse(HEAD + "pkcs12 user-protected.p12\n", reader)
    assert c.ca is None and c.key_passphrase is None  # its CA is read once it is unlocked
    assert any("the PKCS#12 bundle is encrypted" in w for w in warnings(c))
    lines = "\n".join(summary(c))
    assert "server check: the PKCS#12 bundle's CA certificates (read when it is unlocked)" in lines
    assert "PKCS#12 (encrypted: passphrase from a prompt at start)" in "\n".join(summary(c))


def test_inline_bundle_without_ca(reader: Reader, pki: Pki) -> None:
    b64 = base64.b64encode(pki.client_p12).decode()
    rows = "\n".join(b64[i : i + 64] for i in range(0, len(b64), 64))
    c = parse(HEAD + f"<pkcs12>\n{rows}\n</pkcs12>\n", reader)
    assert c.ca == pki.ca.cert_pem and c.pkcs12 == Secret(pki.client_p12)
    b64 = base64.b64encode(pki.client_p12_protected).decode()
    c = parse(HEAD + f"askpass pass.txt\n<pkcs12>\n{b64}\n</pkcs12>\n", reader)
    assert c.ca == pki.ca.cert_pem and c.pkcs12 == Secret(pki.client_p12_protected)


def test_the_passphrase_stays_out_of_json_and_the_formatted_config(reader: Reader) -> None:
    text = HEAD + "ca ca.crt\ncert client.crt\nkey client-encrypted.key\naskpass pass.txt\n"
    c = parse(text, reader)
    document = json.dumps(config_document(c))
    assert ENCRYPTED_KEY_PASSPHRASE not in document
    assert json.loads(document)["key_passphrase"] == "<redacted>"
    assert ENCRYPTED_KEY_PASSPHRASE not in "\n".join(summary(c))
    formatted = format_config(c)
    assert ENCRYPTED_KEY_PASSPHRASE not in formatted
    assert "-----BEGIN ENCRYPTED PRIVATE KEY-----" in formatted  # the key stays encrypted
    again = parse_config(formatted, read_file=lambda name: pytest.fail(f"read {name}"))
    assert again == c and again.key_passphrase is None
