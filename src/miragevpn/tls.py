"""TLS over memory BIOs (pyOpenSSL): the TLS client of one key state.

The OpenVPN client is always the TLS client. Records come in through `receive_records` (the
reassembled payloads of P_CONTROL_V1 packets) and go out through `outgoing_records`; the
control-channel reliability layer chops them into packets. Nothing here does IO.

Trust, as OpenVPN 2.6 does it (`ssl_verify.c`, `ssl_openssl.c`):
- `ca`: the chain must verify against the given certificates (added to the context's store from
  PEM text; no files, no system store).
- `peer-fingerprint`: the leaf's SHA-256 digest must be one of the list; without `ca` the chain
  is not checked at all (self-signed servers).
- `remote-cert-tls server`: the leaf must carry a Key Usage extension and the TLS Web Server
  Authentication extended key usage.
- `verify-x509-name`: subject / CN / CN prefix of the leaf.
When WE reject the server's certificate, `ServerCertificateRejected` says why in plain words;
an alert from the server (e.g. it rejected *our* certificate) raises `TlsAlertReceived`, also
in plain words (`describe_alert`): the two sides are never confused.

pyOpenSSL calls whose form depends on its release (23 on Debian 12 to the newest) go through
`openssl_compat`: certificates and keys in the form each release wants, and `tls-ciphersuites`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL, crypto

from .config.keys import KeyMaterialError
from .config.model import Config, Secret, TlsVersion, VerifyX509Name, X509NameKind
from .config.unlock import load_pkcs12, load_private_key
from .errors import (
    ConfigError,
    LocalProtocolError,
    RemoteProtocolError,
    ServerCertificateRejected,
    TlsAlertReceived,
)
from .openssl_compat import (
    set_tls13_ciphersuites,
    ssl_certificate,
    ssl_private_key,
    trust_certificate,
    verify_error_text,
)

_PEM_CERT = re.compile(
    rb"-----BEGIN CERTIFICATE-----\s.*?-----END CERTIFICATE-----", re.DOTALL | re.ASCII
)

_PROTO_VERSIONS = {
    TlsVersion.TLS1_0: SSL.TLS1_VERSION,
    TlsVersion.TLS1_1: SSL.TLS1_1_VERSION,
    TlsVersion.TLS1_2: SSL.TLS1_2_VERSION,
    TlsVersion.TLS1_3: SSL.TLS1_3_VERSION,
}
# OpenVPN 2.6 default `tls-version-min 1.2` (options.c); "or-highest" means the best we have.
_DEFAULT_MIN = TlsVersion.TLS1_2
_HIGHEST = TlsVersion.TLS1_3

# X509_V_ERR_* codes (openssl/x509_vfy.h) that mean "this chain does not lead to our CA".
_NOT_OUR_CA = {2, 7, 18, 19, 20, 21, 27, 30, 32}
_EXPIRED = 10
_NOT_YET_VALID = 9
_INVALID_PURPOSE = 26  # OpenSSL's own check of the leaf's EKU for a TLS server

_READ_CHUNK = 65536

# A fatal alert from the server, as OpenSSL reports it ("tlsv1 alert unknown ca",
# "sslv3 alert bad certificate", "tlsv13 alert certificate required": ssl/ssl_err.c).
_ALERT = re.compile(r"\b(?:sslv3|tlsv1|tlsv13) alert ([a-z0-9 ]+)")
_REJECTED_OUR_CERTIFICATE = "the server rejected our certificate"
_CANNOT_READ_US = "the server could not parse our TLS messages"
# The common alerts (RFC 8446 §6.2) in plain words: (what it means for us, the alert's name).
_ALERT_WORDS: dict[str, tuple[str, str]] = {
    "unknown ca": (_REJECTED_OUR_CERTIFICATE, "unknown CA"),
    "bad certificate": (_REJECTED_OUR_CERTIFICATE, "bad certificate"),
    "certificate unknown": (_REJECTED_OUR_CERTIFICATE, "certificate unknown"),
    "unsupported certificate": (_REJECTED_OUR_CERTIFICATE, "unsupported certificate"),
    "certificate expired": ("the server says our certificate has expired", "certificate expired"),
    "certificate revoked": ("the server says our certificate is revoked", "certificate revoked"),
    "certificate required": (
        "the server wants a client certificate and we sent none (cert/key or pkcs12)",
        "certificate required",
    ),
    "access denied": ("the server denied us access", "access denied"),
    "handshake failure": (
        "the server found no TLS cipher or group in common with ours (tls-cipher, "
        "tls-ciphersuites)",
        "handshake failure",
    ),
    "protocol version": (
        "the server accepts none of our TLS versions (tls-version-min/-max)",
        "protocol version",
    ),
    "insufficient security": (
        "the server wants stronger TLS ciphers than ours (tls-cipher)",
        "insufficient security",
    ),
    "decrypt error": (
        "the server could not verify our handshake (is our key the certificate's?)",
        "decrypt error",
    ),
    "internal error": ("the server's TLS library failed", "internal error"),
    "decode error": (_CANNOT_READ_US, "decode error"),
    "illegal parameter": (_CANNOT_READ_US, "illegal parameter"),
    "unexpected message": (_CANNOT_READ_US, "unexpected message"),
    "bad record mac": (_CANNOT_READ_US, "bad record MAC"),
}


def describe_alert(openssl_reason: str) -> tuple[str, str] | None:
    """(plain words, OpenSSL's alert words) for an OpenSSL error text that reports an alert
    received from the server, or None if it does not report one."""
    match = _ALERT.search(openssl_reason)
    if match is None:
        return None
    alert = match.group(1).strip()
    words, name = _ALERT_WORDS.get(alert, ("the server ended the TLS session", alert))
    return f"{words} (TLS alert: {name})", alert


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsSettings:
    """What the TLS client needs from the configuration, as PEM text and plain values."""

    ca_pem: str | None = None
    cert_pem: str | None = None
    # the private key (maybe encrypted) and the bundle (maybe protected): never in repr
    key_pem: bytes | None = field(default=None, repr=False)
    pkcs12_der: bytes | None = field(default=None, repr=False)
    key_passphrase: Secret | None = None  # unlocks either (config/unlock.py)
    extra_certs_pem: str | None = None
    peer_fingerprints: tuple[bytes, ...] = ()
    remote_cert_tls_server: bool = False
    remote_cert_ku: tuple[int, ...] | None = None  # as Config.remote_cert_ku
    remote_cert_eku: str | None = None  # a dotted OID
    verify_x509_name: VerifyX509Name | None = None
    version_min: TlsVersion | None = None
    version_min_or_highest: bool = False
    version_max: TlsVersion | None = None
    cipher_list: str | None = None
    ciphersuites: str | None = None

    @classmethod
    def from_config(cls, config: Config) -> TlsSettings:
        return cls(
            ca_pem=config.ca,
            cert_pem=config.cert,
            key_pem=config.key.value if config.key is not None else None,
            pkcs12_der=config.pkcs12.value if config.pkcs12 is not None else None,
            key_passphrase=config.key_passphrase,
            extra_certs_pem=config.extra_certs,
            peer_fingerprints=config.peer_fingerprints,
            remote_cert_tls_server=config.remote_cert_tls_server,
            remote_cert_ku=config.remote_cert_ku,
            remote_cert_eku=config.remote_cert_eku,
            verify_x509_name=config.verify_x509_name,
            version_min=config.tls_version_min,
            version_min_or_highest=config.tls_version_min_or_highest,
            version_max=config.tls_version_max,
            cipher_list=config.tls_cipher,
            ciphersuites=config.tls_ciphersuites,
        )


def load_pem_certificates(text: str) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle (cryptography 38 has no multi-certificate loader)."""
    blocks = _PEM_CERT.findall(text.encode("ascii", "replace"))
    try:
        return [x509.load_pem_x509_certificate(block) for block in blocks]
    except ValueError as exc:
        raise ConfigError(f"unreadable certificate: {exc}") from exc


def build_context(settings: TlsSettings) -> SSL.Context:
    """A client `SSL.Context` from the settings; `ConfigError` if something cannot be used."""
    if settings.ca_pem is None and not settings.peer_fingerprints and not settings.pkcs12_der:
        raise ConfigError("no way to authenticate the server: give `ca` or `peer-fingerprint`")
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    # OpenVPN disables session tickets and the session cache: every handshake is a full one.
    ctx.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_COMPRESSION)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)

    version_min = _HIGHEST if settings.version_min_or_highest else settings.version_min
    ctx.set_min_proto_version(_PROTO_VERSIONS[version_min or _DEFAULT_MIN])
    if settings.version_max is not None:
        ctx.set_max_proto_version(_PROTO_VERSIONS[settings.version_max])

    try:
        if settings.cipher_list:
            ctx.set_cipher_list(settings.cipher_list.encode("ascii"))
    except (SSL.Error, UnicodeEncodeError) as exc:
        raise ConfigError(f"tls-cipher not accepted by OpenSSL: {exc}") from exc
    if settings.ciphersuites:
        set_tls13_ciphersuites(ctx, settings.ciphersuites)

    trusted = 0
    if settings.ca_pem is not None:
        certificates = load_pem_certificates(settings.ca_pem)
        if not certificates:
            raise ConfigError("`ca` contains no certificate")
        for certificate in certificates:
            trust_certificate(ctx, certificate)
        trusted = len(certificates)

    trusted += _load_client_identity(ctx, settings)
    if not trusted and not settings.peer_fingerprints:
        raise ConfigError(
            "no way to authenticate the server (the PKCS#12 bundle carries no CA certificate): "
            "give `ca` or `peer-fingerprint`"
        )
    return ctx


def _load_client_identity(ctx: SSL.Context, settings: TlsSettings) -> int:
    """Our certificate and key, unlocked with the passphrase when they need one. Returns how
    many of the bundle's certificates became trust anchors: without `ca` they all do, with it
    they are only sent as the chain (ssl_openssl.c tls_ctx_load_pkcs12)."""
    trusted = 0
    try:
        if settings.pkcs12_der is not None:
            bundle = load_pkcs12(settings.pkcs12_der, settings.key_passphrase)
            ctx.use_certificate(ssl_certificate(bundle.cert))
            ctx.use_privatekey(ssl_private_key(bundle.key))
            ctx.check_privatekey()
            for chain_cert in bundle.extra:
                if settings.ca_pem is None:
                    trust_certificate(ctx, chain_cert)
                    trusted += 1
                else:
                    ctx.add_extra_chain_cert(ssl_certificate(chain_cert))
        elif settings.cert_pem is not None or settings.key_pem is not None:
            if settings.cert_pem is None or settings.key_pem is None:
                raise ConfigError("`cert` and `key` must be given together")
            # the certificate is parsed by pyOpenSSL (its errors), the key by cryptography
            # (unlocked with the passphrase); both handed over in the form this pyOpenSSL wants
            parsed_cert = crypto.load_certificate(crypto.FILETYPE_PEM, settings.cert_pem.encode())
            key = load_private_key(settings.key_pem, settings.key_passphrase)
            ctx.use_certificate(ssl_certificate(parsed_cert.to_cryptography()))
            ctx.use_privatekey(ssl_private_key(key))
            ctx.check_privatekey()
        if settings.extra_certs_pem is not None:
            for chain_cert in load_pem_certificates(settings.extra_certs_pem):
                ctx.add_extra_chain_cert(ssl_certificate(chain_cert))
    except KeyMaterialError as exc:  # our own words: a missing or wrong passphrase, ...
        raise ConfigError(str(exc)) from None
    except (SSL.Error, crypto.Error, ValueError) as exc:
        raise ConfigError(f"client certificate or key unusable: {exc}") from exc
    return trusted


def common_name(certificate: x509.Certificate) -> str | None:
    attributes = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attributes:
        return None
    value = attributes[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def openvpn_subject(certificate: x509.Certificate) -> str:
    """The subject as OpenVPN prints it (`X509_NAME_print_ex`, XN_FLAG_SEP_CPLUS_SPC|FN_SN):
    forward order, ", " between attributes, e.g. "C=DE, O=Example, CN=server"."""
    parts = []
    for rdn in certificate.subject.rdns:
        parts.append("+".join(attr.rfc4514_string() for attr in rdn))
    return ", ".join(parts)


def check_leaf(certificate: x509.Certificate, settings: TlsSettings) -> str | None:
    """Why the server's leaf certificate is unacceptable under the settings, or None.

    Chain and fingerprint checks happen in the verify callback; this is the policy part."""
    if settings.remote_cert_tls_server:
        try:
            certificate.extensions.get_extension_for_class(x509.KeyUsage)
        except x509.ExtensionNotFound:
            return "server certificate lacks the Key Usage extension (remote-cert-tls server)"
        try:
            eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            eku = x509.ExtendedKeyUsage([])
        if ExtendedKeyUsageOID.SERVER_AUTH not in eku:
            return "server certificate lacks TLS Web Server Authentication EKU"
    usage_problem = _usage_problem(certificate, settings)
    if usage_problem is not None:
        return usage_problem
    wanted = settings.verify_x509_name
    if wanted is not None:
        cn = common_name(certificate)
        if wanted.kind is X509NameKind.SUBJECT:
            subjects = {openvpn_subject(certificate), certificate.subject.rfc4514_string()}
            if wanted.name not in subjects:
                return (
                    f"server certificate subject {openvpn_subject(certificate)!r} "
                    f"is not {wanted.name!r} (verify-x509-name)"
                )
        elif wanted.kind is X509NameKind.NAME:
            if cn != wanted.name:
                return f"server certificate name {cn!r} is not {wanted.name!r} (verify-x509-name)"
        elif cn is None or not cn.startswith(wanted.name):
            return (
                f"server certificate name {cn!r} does not start with {wanted.name!r} "
                "(verify-x509-name name-prefix)"
            )
    return None


_KU_BITS = (  # x509.KeyUsage attribute -> OpenVPN's bit (ASN.1 bit i is 1 << (7 - i))
    ("digital_signature", 0x80),
    ("content_commitment", 0x40),
    ("key_encipherment", 0x20),
    ("data_encipherment", 0x10),
    ("key_agreement", 0x08),
    ("key_cert_sign", 0x04),
    ("crl_sign", 0x02),
)


def key_usage_bits(usage: x509.KeyUsage) -> int:
    """The key usage as OpenVPN compares it with remote-cert-ku (its first eight bits)."""
    bits = 0
    for attribute, bit in _KU_BITS:
        if getattr(usage, attribute):
            bits |= bit
    if usage.key_agreement and usage.encipher_only:
        bits |= 0x01  # encipher_only may only be read when key_agreement is set
    return bits


def _usage_problem(certificate: x509.Certificate, settings: TlsSettings) -> str | None:
    """remote-cert-ku / remote-cert-eku, as OpenVPN's x509_verify_cert_ku / _eku."""
    if settings.remote_cert_ku is not None:
        try:
            usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            return "server certificate lacks the Key Usage extension (remote-cert-ku)"
        bits = key_usage_bits(usage)
        wanted = settings.remote_cert_ku
        if wanted and not any(bits & ku == ku for ku in wanted):
            listed = " ".join(f"{ku:02x}" for ku in wanted)
            return (
                f"server certificate key usage {bits:02x} holds none of {listed} (remote-cert-ku)"
            )
    if settings.remote_cert_eku is not None:
        try:
            eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            eku = x509.ExtendedKeyUsage([])
        if settings.remote_cert_eku not in {oid.dotted_string for oid in eku}:
            return (
                f"server certificate lacks extended key usage {settings.remote_cert_eku} "
                "(remote-cert-eku)"
            )
    return None


def _chain_error_reason(errno: int) -> str:
    if errno in _NOT_OUR_CA:
        return "server certificate not signed by the configured CA"
    if errno == _EXPIRED:
        return "server certificate (or its CA) has expired"
    if errno == _NOT_YET_VALID:
        return "server certificate (or its CA) is not yet valid"
    if errno == _INVALID_PURPOSE:
        return "server certificate lacks TLS Web Server Authentication EKU"
    return f"server certificate rejected: {verify_error_text(errno)}"


class TlsSession:
    """The TLS client of one key state, over memory BIOs.

    `receive_records(data)` feeds bytes from the server; `outgoing_records()` drains bytes for
    the server; application data is written with `write_application_data` once the handshake is
    complete and read (buffered) with `read_application_data`.
    """

    def __init__(self, settings: TlsSettings, context: SSL.Context | None = None) -> None:
        self._settings = settings
        self._rejection: str | None = None
        self._plaintext = bytearray()
        self.handshake_complete = False
        self.closed = False
        ctx = context if context is not None else build_context(settings)
        ctx.set_verify(SSL.VERIFY_PEER, self._verify)
        self._conn = SSL.Connection(ctx, None)
        self._conn.set_connect_state()
        self._advance()  # the ClientHello is ready in outgoing_records() at once

    # ------------------------------------------------------------------ verification

    def _verify(
        self, _conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int
    ) -> bool:
        settings = self._settings
        if self._rejection is not None:
            return False
        if settings.ca_pem is not None and not ok:
            self._rejection = _chain_error_reason(errno)
            return False
        if depth != 0:
            return True  # intermediate certificates: only the chain check above applies
        leaf = cert.to_cryptography()
        if settings.peer_fingerprints:
            digest = hashlib.sha256(crypto.dump_certificate(crypto.FILETYPE_ASN1, cert)).digest()
            if digest not in settings.peer_fingerprints:
                self._rejection = "server certificate fingerprint is not in peer-fingerprint"
                return False
        reason = check_leaf(leaf, settings)
        if reason is not None:
            self._rejection = reason
            return False
        return True

    # ------------------------------------------------------------------ records

    def receive_records(self, data: bytes) -> None:
        """Feed TLS bytes from the server. Raises `ServerCertificateRejected` (we refused it)
        or `RemoteProtocolError` (TLS failure); the key state is dead afterwards."""
        if self.closed:
            return
        self._conn.bio_write(data)
        self._advance()

    def _advance(self) -> None:
        try:
            if not self.handshake_complete:
                try:
                    self._conn.do_handshake()
                except SSL.WantReadError:
                    return
                self.handshake_complete = True
            while True:
                try:
                    chunk = self._conn.recv(_READ_CHUNK)
                except SSL.WantReadError:
                    return
                except SSL.ZeroReturnError:
                    self.closed = True
                    return
                if not chunk:
                    return
                self._plaintext += chunk
        except SSL.Error as exc:
            self.closed = True
            if self._rejection is not None:
                raise ServerCertificateRejected(self._rejection) from exc
            reason = _describe(exc)
            alert = describe_alert(reason)
            if alert is not None:
                raise TlsAlertReceived(alert[0], alert=alert[1]) from exc
            raise RemoteProtocolError(f"TLS failure: {reason}") from exc

    def outgoing_records(self) -> bytes:
        """All TLS bytes waiting to go to the server (may be empty)."""
        out = bytearray()
        while True:
            try:
                chunk = self._conn.bio_read(_READ_CHUNK)
            except SSL.WantReadError:
                break
            if not chunk:
                break
            out += chunk
        return bytes(out)

    # ------------------------------------------------------------------ application data

    def write_application_data(self, data: bytes) -> None:
        """Encrypt `data` as TLS records (one `SSL_write`: one message, as OpenVPN expects)."""
        if not self.handshake_complete or self.closed:
            raise LocalProtocolError("TLS application data before the handshake completed")
        try:
            self._conn.sendall(data)
        except SSL.Error as exc:
            raise LocalProtocolError(f"TLS write failed: {_describe(exc)}") from exc

    def read_application_data(self) -> bytes:
        """Drain the decrypted application data received so far."""
        data = bytes(self._plaintext)
        self._plaintext.clear()
        return data

    # ------------------------------------------------------------------ properties

    @property
    def version(self) -> str:
        return str(self._conn.get_protocol_version_name())

    @property
    def cipher(self) -> str:
        name = self._conn.get_cipher_name()
        return str(name) if name is not None else ""

    @property
    def peer_certificate(self) -> x509.Certificate | None:
        cert = self._conn.get_peer_certificate()
        return cert.to_cryptography() if cert is not None else None

    @property
    def peer_subject(self) -> str:
        cert = self.peer_certificate
        return cert.subject.rfc4514_string() if cert is not None else ""

    def export_keying_material(self, label: bytes, length: int) -> bytes:
        """RFC 5705 / RFC 8446 exporter with no context (OpenVPN's `use_context = 0`)."""
        if not self.handshake_complete:
            raise LocalProtocolError("keying material exported before the handshake completed")
        return bytes(self._conn.export_keying_material(label, length, None))


def _describe(exc: SSL.Error) -> str:
    details = exc.args[0] if exc.args else []
    if isinstance(details, list) and details:
        return "; ".join(str(item[-1]) for item in details if isinstance(item, tuple)) or str(exc)
    return str(exc) or type(exc).__name__
