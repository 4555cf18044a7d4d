"""cipherchoice.py: pushed cipher first, then the server's options string, then our fallback;
auth from the server's options for CBC; BF-CBC and unknown ciphers refused in words."""

from __future__ import annotations

from miragevpn.cipherchoice import choose_data_cipher, parse_options_string
from miragevpn.config.model import Config

V4_CBC = (
    "V4,dev-type tun,link-mtu 1557,tun-mtu 1500,proto UDPv4,cipher AES-128-CBC,auth SHA256,"
    "keysize 128,key-method 2,tls-server"
)
V4_DEFAULT = "V4,dev-type tun,link-mtu 1541,tun-mtu 1500,proto UDPv4,auth SHA1,keysize 128"


def test_options_string_items() -> None:
    items = parse_options_string(V4_CBC)
    assert items["cipher"] == "AES-128-CBC" and items["auth"] == "SHA256"
    assert items["V4"] == "" and items["tls-server"] == ""
    assert parse_options_string("") == {}


def test_a_pushed_cipher_wins() -> None:
    choice = choose_data_cipher(Config(), pushed_cipher="aes-256-gcm", their_options=V4_CBC)
    assert (choice.cipher, choice.auth, choice.source) == ("AES-256-GCM", None, "pushed")
    assert not choice.is_legacy and choice.notes == ()
    cbc = choose_data_cipher(Config(auth="SHA512"), pushed_cipher="AES-256-CBC", their_options="")
    assert (cbc.cipher, cbc.auth, cbc.is_legacy) == ("AES-256-CBC", "SHA512", True)
    assert any("legacy data cipher AES-256-CBC with HMAC-SHA512 (pushed)" in n for n in cbc.notes)


def test_without_a_push_the_servers_options_name_cipher_and_auth() -> None:
    config = Config(data_ciphers_fallback="AES-256-CBC")
    choice = choose_data_cipher(config, pushed_cipher=None, their_options=V4_CBC)
    assert (choice.cipher, choice.auth) == ("AES-128-CBC", "SHA256")
    assert choice.source == "server options string"
    assert any("auth SHA256 (ours: SHA1)" in note for note in choice.notes)


def test_then_our_fallback_then_our_cipher() -> None:
    fallback = Config(data_ciphers_fallback="AES-192-CBC", cipher="AES-128-CBC", auth="SHA384")
    choice = choose_data_cipher(fallback, pushed_cipher=None, their_options=V4_DEFAULT)
    # the server's options name only its auth (SHA1): that is what it authenticates with
    assert (choice.cipher, choice.auth, choice.source) == (
        "AES-192-CBC",
        "SHA1",
        "data-ciphers-fallback",
    )
    legacy = Config(cipher="AES-256-GCM")
    choice = choose_data_cipher(legacy, pushed_cipher=None, their_options=None)
    assert (choice.cipher, choice.auth, choice.source) == ("AES-256-GCM", None, "cipher")


def test_blowfish_and_nothing_are_refused_naming_the_fallback() -> None:
    nothing = choose_data_cipher(Config(), pushed_cipher=None, their_options=V4_DEFAULT)
    assert nothing.cipher is None and nothing.refusal is not None
    assert "data-ciphers-fallback" in nothing.refusal and "BF-CBC" in nothing.refusal
    blowfish = choose_data_cipher(
        Config(), pushed_cipher=None, their_options=V4_DEFAULT + ",cipher BF-CBC"
    )
    assert blowfish.cipher is None and blowfish.refusal is not None
    assert "data-ciphers-fallback" in blowfish.refusal and "SWEET32" in blowfish.refusal


def test_unknown_ciphers_and_digests_are_refused() -> None:
    odd = choose_data_cipher(Config(), pushed_cipher=None, their_options="V4,cipher SEED-CBC")
    assert odd.cipher is None and "SEED-CBC" in (odd.refusal or "")
    md = choose_data_cipher(
        Config(), pushed_cipher=None, their_options="V4,cipher AES-128-CBC,auth WHIRLPOOL"
    )
    assert md.cipher is None and "WHIRLPOOL" in (md.refusal or "")
    null = choose_data_cipher(
        Config(), pushed_cipher=None, their_options="V4,cipher AES-128-GCM,auth [null-digest]"
    )
    assert (null.cipher, null.auth) == ("AES-128-GCM", None)
