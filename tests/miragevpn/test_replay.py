"""replay.py: the sliding replay window, against a naive model of OpenVPN's rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from miragevpn.errors import ReplayError
from miragevpn.replay import LongReplayWindow, ReplayWindow


class NaiveWindow:
    """The rules of replay.py's docstring, written the slow and obvious way."""

    def __init__(self, packets: int, seconds: float) -> None:
        self.packets = packets
        self.seconds = seconds
        self.time: int | None = None
        self.highest = 0
        self.seen: dict[int, float] = {}

    def accepts(self, replay_id: int, now: float, time: int = 0) -> bool:
        if replay_id == 0:
            return False
        if self.time is not None and time < self.time:
            return False
        if self.time is None or time > self.time:
            self.time, self.highest, self.seen = time, 0, {}
        if self.packets == 0:  # non-backtrack mode: no gaps, no reordering
            ok = self.highest == 0 or replay_id == self.highest + 1
        elif replay_id > self.highest:
            ok = True
        elif self.highest - replay_id >= self.packets or replay_id in self.seen:
            ok = False
        else:
            ok = not any(
                y > replay_id and self.seconds and t < now - self.seconds
                for y, t in self.seen.items()
            )
        if ok:
            self.seen[replay_id] = now
            self.highest = max(self.highest, replay_id)
        return ok


def accepts(w: ReplayWindow, replay_id: int, now: float) -> bool:
    try:
        w.check_and_record(replay_id, now)
    except ReplayError:
        return False
    return True


def test_in_order_and_duplicates() -> None:
    w = ReplayWindow()
    assert accepts(w, 1, 0.0)
    assert accepts(w, 2, 0.0)
    assert not accepts(w, 2, 0.0)
    assert not accepts(w, 1, 0.0)
    assert not accepts(w, 0, 0.0)


def test_reordering_within_the_window() -> None:
    w = ReplayWindow(packets=64)
    assert accepts(w, 100, 0.0)
    assert accepts(w, 37, 0.0)  # 100 - 37 = 63 < 64
    assert not accepts(w, 36, 0.0)  # one too old
    assert accepts(w, 99, 0.0)
    assert not accepts(w, 99, 0.0)
    assert accepts(w, 200, 0.0)  # jump: everything below is unseen again
    assert accepts(w, 150, 0.0)
    assert not accepts(w, 100, 0.0)


def test_time_backtrack() -> None:
    w = ReplayWindow(packets=64, seconds=15)
    assert accepts(w, 1, 0.0)
    assert accepts(w, 5, 10.0)
    assert accepts(w, 3, 24.0)  # 5 was seen 14 s ago: the gap may still be filled
    assert not accepts(w, 2, 25.5)  # 5 was seen 15.5 s ago
    assert accepts(w, 6, 25.5)
    w2 = ReplayWindow(packets=64, seconds=0)  # time rule disabled
    assert accepts(w2, 5, 0.0)
    assert accepts(w2, 4, 1e6)


def test_non_backtrack_mode() -> None:
    w = ReplayWindow(packets=0)
    assert accepts(w, 7, 0.0)
    assert accepts(w, 8, 0.0)
    assert not accepts(w, 10, 0.0)
    assert not accepts(w, 8, 0.0)
    assert accepts(w, 9, 0.0)


def test_window_bounds() -> None:
    with pytest.raises(ValueError):
        ReplayWindow(packets=65537)
    with pytest.raises(ValueError):
        ReplayWindow(seconds=601)


def test_long_form() -> None:
    w = LongReplayWindow()
    w.check_and_record(1, 1000, 0.0)
    w.check_and_record(2, 1000, 0.0)
    with pytest.raises(ReplayError):
        w.check_and_record(2, 1000, 0.0)
    with pytest.raises(ReplayError):
        w.check_and_record(3, 999, 0.0)  # an older time
    w.check_and_record(1, 1001, 0.0)  # a newer time restarts the sequence
    assert (w.time, w.highest) == (1001, 1)
    with pytest.raises(ReplayError):
        w.check_and_record(0, 2000, 0.0)


ids = st.integers(0, 300)
steps = st.lists(
    st.tuples(ids, st.sampled_from([0.0, 0.5, 1.0, 4.0, 7.5, 15.0, 16.0]), st.integers(0, 2)),
    max_size=120,
)


@given(st.integers(0, 70), st.sampled_from([0.0, 5.0, 15.0]), steps)
def test_matches_naive_model(packets: int, seconds: float, script: list) -> None:  # type: ignore[type-arg]
    real = ReplayWindow(packets, seconds)
    model = NaiveWindow(packets, seconds)
    now = 0.0
    for replay_id, dt, _ in script:
        now += dt
        assert accepts(real, replay_id, now) == model.accepts(replay_id, now), (replay_id, now)


@given(st.integers(1, 70), steps)
def test_long_form_matches_naive_model(packets: int, script: list) -> None:  # type: ignore[type-arg]
    real = LongReplayWindow(packets, 15.0)
    model = NaiveWindow(packets, 15.0)
    now = 0.0
    time = 100
    for replay_id, dt, time_step in script:
        now += dt
        t = time + time_step - 1  # older, same or newer sender time
        try:
            real.check_and_record(replay_id, t, now)
            got = True
        except ReplayError:
            got = False
        assert got == model.accepts(replay_id, now, t)
        time = max(time, model.time or 0)
