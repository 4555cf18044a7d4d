"""One test per lexical rule (OpenVPN options.c parse_line / check_inline_file)."""

from __future__ import annotations

import pytest

from miragevpn.config.lexer import decode_config, lex, split_line
from miragevpn.errors import ConfigError


def words(line: str) -> list[str]:
    return [t.text for t in split_line(line, 1)]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("remote a 1194", ["remote", "a", "1194"]),
        ("  remote\ta   1194  ", ["remote", "a", "1194"]),
        ("# comment", []),
        ("; comment", []),
        ("remote a # trailing comment", ["remote", "a"]),
        ("remote a ;trailing", ["remote", "a"]),
        ("remote a#b", ["remote", "a#b"]),  # comment only at token start
        ('verify-x509-name "C=DE, CN=x" subject', ["verify-x509-name", "C=DE, CN=x", "subject"]),
        ("verify-x509-name 'a \\ b' name", ["verify-x509-name", "a \\ b", "name"]),
        ('x "a\\"b"', ["x", 'a"b']),
        ('x "a\\\\b"', ["x", "a\\b"]),
        ("x a\\ b", ["x", "a b"]),
        ('x ""', ["x", ""]),
        ('x "a"b', ["x", "a", "b"]),  # a closing quote ends the token
        ('x a"b', ["x", 'a"b']),  # a quote inside an unquoted token is literal
        ("remote a\r", ["remote", "a"]),
        ("", []),
    ],
)
def test_tokens(line: str, expected: list[str]) -> None:
    assert words(line) == expected


def test_columns() -> None:
    tokens = split_line("  remote  host", 7)
    assert [(t.line, t.column) for t in tokens] == [(7, 3), (7, 11)]


@pytest.mark.parametrize(
    ("line", "fragment", "column"),
    [
        ('x "abc', "no closing quotation", 3),
        ("x 'abc", "no closing single", 3),
        ("x c:\\dir", "bad backslash", 5),
    ],
)
def test_token_errors(line: str, fragment: str, column: int) -> None:
    with pytest.raises(ConfigError, match=fragment) as info:
        split_line(line, 4)
    assert (info.value.line, info.value.column) == (4, column)


def test_double_dash_and_line_endings() -> None:
    ds = lex("--client\r\n\r\n--remote a\nproto udp\r\nnobind")  # no final newline
    assert [(d.name, d.line) for d in ds] == [
        ("client", 1),
        ("remote", 3),
        ("proto", 4),
        ("nobind", 5),
    ]
    assert lex("--")[0].name == "--"  # too short to be a dashed name


def test_inline_block() -> None:
    text = "client\n<ca>\r\nopenssl dump\n-----BEGIN CERTIFICATE-----\r\n</ca>\nnobind\n"
    ds = lex(text)
    assert [d.name for d in ds] == ["client", "ca", "nobind"]
    ca = ds[1]
    assert ca.inline == "openssl dump\n-----BEGIN CERTIFICATE-----\n"
    assert (ca.line, ca.end_line) == (2, 5)
    assert ds[2].line == 6


def test_inline_close_tag_is_a_prefix_after_whitespace() -> None:
    ds = lex("<key>\nx\n   </key>trailing\n")
    assert ds[0].inline == "x\n"


def test_unclosed_block() -> None:
    with pytest.raises(ConfigError, match="</ca> missing") as info:
        lex("client\n<ca>\nabc\n")
    assert info.value.line == 2


def test_bom_nul_and_utf8() -> None:
    assert decode_config(b"\xef\xbb\xbfclient\n") == "client\n"
    with pytest.raises(ConfigError, match="NUL") as info:
        decode_config(b"client\nre\x00mote\n")
    assert (info.value.line, info.value.column) == (2, 3)
    with pytest.raises(ConfigError, match="UTF-8") as info:
        decode_config(b"client\n\n  \xff\n")
    assert (info.value.line, info.value.column) == (3, 3)


@pytest.mark.parametrize(
    "line",
    [
        b"# Ren\xe9's profile",  # Latin-1 in a comment line
        b"; caf\xe9",
        b"verb 3 # r\xe9glage",  # a comment after the options
        b"remote 'vpn #1' 1194 ;\xff",  # a quoted '#' is no comment; the later ';' is
        b'remote "a\\" b" 1194 #\xe9',
    ],
)
def test_bytes_that_are_not_utf8_are_accepted_inside_comments(line: bytes) -> None:
    text = decode_config(b"client\n" + line + b"\ndev tun\n")
    assert "\ufffd" in text
    assert lex(text)[0].name == "client"
    assert lex(text)[-1].name == "dev"


@pytest.mark.parametrize(
    ("line", "column"),
    [
        (b"remote caf\xe9.example", 11),  # in an option
        (b"remote 'vpn #\xe9' 1194", 14),  # a '#' inside quotes starts no comment
        (b"remote a#\xe9", 10),  # nor a '#' inside a word
        (b'remote "unclosed #\xe9', 19),
    ],
)
def test_bytes_that_are_not_utf8_elsewhere_are_an_error_at_their_place(
    line: bytes, column: int
) -> None:
    with pytest.raises(ConfigError, match="not UTF-8 text outside a comment") as info:
        decode_config(b"client\n" + line + b"\n# \xe9 fine\n")
    assert (info.value.line, info.value.column) == (2, column)
