"""The directive table and its listing in docs/config-policy.md agree."""

from __future__ import annotations

from pathlib import Path

from miragevpn.config.context import Outcome
from miragevpn.config.directives import TABLE

DOCS = Path(__file__).resolve().parents[3] / "docs" / "config-policy.md"
HEADING = "## Directive outcomes\n"


def outcomes_section() -> str:
    """The "Directive outcomes" section as the table gives it."""
    out = [HEADING]
    for outcome in Outcome:
        names = sorted(n for n, spec in TABLE.items() if spec.outcome is outcome)
        out.append(f"\n### {outcome.value}\n\n")
        if outcome is Outcome.USED:
            out.append(", ".join(f"`{n}`" for n in names) + "\n")
            continue
        out.append("| directive | reason |\n|---|---|\n")
        out += [f"| `{n}` | {TABLE[n].reason} |\n" for n in names]
    return "".join(out)


def test_the_docs_list_every_directive_with_its_outcome_and_reason() -> None:
    text = DOCS.read_text()
    assert HEADING in text
    assert text[text.index(HEADING) :] == outcomes_section()


def test_every_outcome_but_used_gives_a_reason() -> None:
    for name, spec in TABLE.items():
        assert (spec.outcome is Outcome.USED) == (spec.reason == ""), name
