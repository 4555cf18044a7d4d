"""A hostile profile costs little (issue 8 finding 4): capped size, directives and tokens per
line, and parse time linear in the input (remotes and <connection> blocks resolved in one pass).

The times are generous bounds for a loaded 2-core machine; before the fix the same inputs took
12 s (16,000 remotes), 17 s (16,000 <connection> blocks) and 22 s / 1 GB (16 MB of lines)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from miragevpn.config import parse_config
from miragevpn.config.lexer import MAX_CONFIG_BYTES, MAX_DIRECTIVES, MAX_TOKENS_PER_LINE
from miragevpn.errors import ConfigError

HEAD = "client\ndev tun\nauth-user-pass\npeer-fingerprint " + ":".join(["AB"] * 32) + "\n"


LOCAL = ("port 443", "proto tcp")


def no_files(path: str) -> bytes:
    raise FileNotFoundError(path)


def _timed(text: str) -> tuple[float, Callable[[], object]]:
    start = time.monotonic()
    try:
        result: object = parse_config(text, read_file=no_files)
    except ConfigError as exc:
        result = exc
    return time.monotonic() - start, lambda: result


def test_many_remotes_parse_in_linear_time() -> None:
    n = MAX_DIRECTIVES - 10
    elapsed, result = _timed(
        HEAD + "".join(f"remote h{i}.example {i % 60000 + 1}\n" for i in range(n))
    )
    config = result()
    assert not isinstance(config, ConfigError), config
    assert len(config.remotes) == n  # type: ignore[attr-defined]
    assert elapsed < 2.0


def test_many_connection_blocks_parse_in_linear_time() -> None:
    n = MAX_DIRECTIVES // 3 - 10  # each block counts itself and its two lines
    blocks = "".join(
        f"<connection>\nremote h{i}.example\n{LOCAL[i % 2]}\n</connection>\n" for i in range(n)
    )
    elapsed, result = _timed(HEAD + "proto udp\nport 1195\n" + blocks)
    config = result()
    assert not isinstance(config, ConfigError), config
    remotes = config.remotes  # type: ignore[attr-defined]
    assert len(remotes) == n
    assert (remotes[0].port, remotes[0].proto.transport.value) == (443, "udp")
    assert (remotes[1].port, remotes[1].proto.transport.value) == (1195, "tcp")
    assert elapsed < 2.0


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (HEAD + "remote a\n" * 16000, f"more than {MAX_DIRECTIVES} directives"),
        (
            HEAD + "<connection>\nremote a\n</connection>\n" * 16000,
            f"more than {MAX_DIRECTIVES} directives",
        ),
        (HEAD + "<ca>\n" + "a\n" * (8 * 1024 * 1024 - 100) + "</ca>\n", "larger than"),
        (HEAD + "remote" + " a" * 100000 + "\n", f"more than {MAX_TOKENS_PER_LINE} words"),
    ],
    ids=["16000-remotes", "16000-connections", "16MB-of-lines", "100000-tokens"],
)
def test_hostile_sizes_are_refused_quickly(text: str, fragment: str) -> None:
    elapsed, result = _timed(text)
    error = result()
    assert isinstance(error, ConfigError) and fragment in error.message
    assert elapsed < 1.0


def test_limits_leave_room_for_real_profiles() -> None:
    assert MAX_CONFIG_BYTES >= 512 * 1024 and MAX_DIRECTIVES >= 1000
    # a whole CA bundle inline and a few hundred remotes are fine
    text = HEAD + "".join(f"remote r{i}.example\n" for i in range(300))
    assert len(parse_config(text, read_file=no_files).remotes) == 300


def test_the_directive_cap_counts_connection_bodies() -> None:
    text = HEAD + "<connection>\nremote a\n" + "nobind\n" * MAX_DIRECTIVES + "</connection>\n"
    with pytest.raises(ConfigError, match="directives") as info:
        parse_config(text, read_file=no_files)
    assert info.value.line is not None and info.value.line > MAX_DIRECTIVES - 10
