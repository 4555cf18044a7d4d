"""check.py summary: the data ciphers offered, what is accepted without negotiation, and
legacy (CBC+HMAC) choices flagged."""

from __future__ import annotations

from miragevpn.config import parse_config
from miragevpn.config.check import summary

BASE = "client\ndev tun\nremote vpn.example.org\nca ca.crt\ncert client.crt\nkey client.key\n"


def lines_for(extra: str, files: dict[str, bytes]) -> list[str]:
    config = parse_config(BASE + extra, read_file=lambda name: files[name])
    return [line for line in summary(config) if "cipher" in line or "legacy" in line]


def test_modern_default_has_no_legacy_line(files: dict[str, bytes]) -> None:
    lines = lines_for("", files)
    assert "  data ciphers offered: AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305" in lines
    assert any("none configured (BF-CBC servers are refused)" in line for line in lines)
    assert not any("legacy" in line for line in lines)


def test_cbc_choices_are_flagged(files: dict[str, bytes]) -> None:
    lines = lines_for("data-ciphers AES-256-GCM:AES-256-CBC\nauth SHA256\n", files)
    assert "  data ciphers offered: AES-256-GCM:AES-256-CBC" in lines
    assert any(line.startswith("  legacy: AES-256-CBC with HMAC-SHA256") for line in lines)
    fallback = lines_for("data-ciphers-fallback AES-128-CBC\n", files)
    assert any("else AES-128-CBC (data-ciphers-fallback)" in line for line in fallback)
    assert any(line.startswith("  legacy: AES-128-CBC with HMAC-SHA1") for line in fallback)


def test_static_key_mode_is_flagged(files: dict[str, bytes]) -> None:
    text = "dev tun\nremote 192.0.2.1\nsecret ta.key 1\ncipher AES-256-CBC\nauth SHA256\n"
    text += "ifconfig 10.9.0.2 10.9.0.1\n"
    config = parse_config(text, read_file=lambda name: files[name])
    lines = summary(config)
    assert "  control channel: none (static-key mode, no TLS)" in lines
    assert (
        "  legacy: static-key mode (no TLS, no forward secrecy), AES-256-CBC with HMAC-SHA256, "
        "key-direction 1"
    ) in lines
    assert any("warning:" in line and "no forward secrecy" in line for line in lines)
