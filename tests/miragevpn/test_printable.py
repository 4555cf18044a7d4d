"""printable: every control character a terminal would act on is shown as an escape."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from miragevpn.printable import printable


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain text, ünïcödé", "plain text, ünïcödé"),
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
        ("bell\x07 tab\t nl\n", "bell\\x07 tab\\x09 nl\\x0a"),
        ("del\x7f c1\x9b", "del\\x7f c1\\x9b"),
        ("invoice\u202efdp.exe", "invoice\\u202efdp.exe"),  # right-to-left override
        (
            "zero\u200bwidth \ufeffbom \u2066isolate\u2069",
            "zero\\u200bwidth \\ufeffbom \\u2066isolate\\u2069",
        ),
    ],
)
def test_controls_are_escaped_and_the_rest_kept(text: str, shown: str) -> None:
    assert printable(text) == shown


CONTROLS = [*range(0x00, 0x20), *range(0x7F, 0xA0), *range(0x200B, 0x2010),
            *range(0x202A, 0x202F), *range(0x2066, 0x206A), 0xFEFF]  # fmt: skip


@given(st.text())
def test_nothing_a_terminal_acts_on_survives(text: str) -> None:
    shown = printable(text)
    assert not any(ord(c) in CONTROLS for c in shown)
    assert shown.count("\\") >= sum(ord(c) in CONTROLS for c in text)


@given(st.text(alphabet=st.characters(blacklist_characters=[chr(c) for c in CONTROLS])))
def test_text_without_controls_is_unchanged(text: str) -> None:
    assert printable(text) == text
