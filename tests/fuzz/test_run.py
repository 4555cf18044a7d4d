"""The fuzzer itself (a short, seeded run; `make fuzz` runs it for real): its targets load and
take their seeds, and an exception that is not ours is reported as a finding."""

from __future__ import annotations

import random

import pytest

from miragevpn.errors import ConfigError
from tests.fuzz.run import TARGETS, Target, attempt, fuzz, mutate


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_targets_accept_their_seeds_or_refuse_them_as_ours(name: str) -> None:
    target = TARGETS[name]()
    results = [attempt(target, seed) for seed in target.seeds]
    assert all(isinstance(r, bool) for r in results), results
    assert any(results)  # at least the typical seed is accepted


def test_a_foreign_exception_is_a_finding() -> None:
    def run(data: bytes) -> bool:
        if b"x" in data:
            raise ConfigError("ours")
        if len(data) > 3:
            return [][len(data)]  # type: ignore[no-any-return]  # IndexError: a bug
        return True

    findings = fuzz([Target("demo", [b"ab"], run)], 0.5, seed=3)
    assert [(f.target, f.kind) for f in findings] == [("demo", "IndexError")]
    assert len(findings[0].data) > 3 and "test_run.py" in findings[0].where


def test_a_slow_input_is_a_finding(monkeypatch: pytest.MonkeyPatch) -> None:
    import tests.fuzz.run as run_module

    monkeypatch.setattr(run_module, "SLOW", 0.0)
    finding = attempt(Target("demo", [b"a"], lambda data: True), b"a")
    assert not isinstance(finding, bool) and finding.kind == "Slow"


def test_mutations_are_bounded_and_deterministic() -> None:
    a = [mutate(b"remote a 1194\n", random.Random(5), [b"x\n"]) for _ in range(3)]
    b = [mutate(b"remote a 1194\n", random.Random(5), [b"x\n"]) for _ in range(3)]
    assert a == b
    assert all(len(m) < 64 * 1024 for m in a)


def test_a_short_seeded_run_of_every_target_finds_nothing() -> None:
    findings = fuzz([make() for make in TARGETS.values()], 60.0, seed=1, max_runs=300)
    assert findings == [], findings
