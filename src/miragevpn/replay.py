"""Sliding-window replay protection (OpenVPN `packet_id.c`, backtrack mode; reference §2.3, §8).

`ReplayWindow` guards short-form replay ids (the data channel: a 4-byte id per key state).
`LongReplayWindow` guards long-form ids (`replay id, time`) of the control-channel wrapping
(tls-auth, tls-crypt): a newer time starts a fresh sequence, an older time is rejected.

Rules for a replay id `x` (same time), with `highest` the largest id accepted so far and `n`
the window size (`--replay-window n t`, default 64 packets, 15 s):
- `x == 0` is never valid;
- `x > highest` is accepted;
- otherwise `x` is accepted only if `highest - x < n`, `x` was not seen yet, and no id
  `y >= x` was accepted more than `t` seconds before `now` (OpenVPN's time backtrack: once a
  later packet is older than `t`, the gap below it can no longer be filled).
OpenVPN applies the time rule lazily (`packet_id_reap`, every 5 s); we apply it exactly, which
is at most 5 s stricter. `t == 0` disables the time rule. `n == 0` is OpenVPN's
non-backtrack mode: ids must follow each other without gaps.

Only accepted ids are recorded; a rejected id leaves the window unchanged.
"""

from __future__ import annotations

from .errors import ReplayError

__all__ = ["MAX_REPLAY_WINDOW", "MAX_TIME_BACKTRACK", "LongReplayWindow", "ReplayWindow"]

MAX_REPLAY_WINDOW = 65536  # packet_id.h: MAX_SEQ_BACKTRACK
MAX_TIME_BACKTRACK = 600  # packet_id.h: MAX_TIME_BACKTRACK

_UNSEEN = -1.0  # a slot's receive time when its id has not been accepted


class ReplayWindow:
    """Replay check for short-form ids: `check_and_record(replay_id, now)` or ReplayError.

    Slots of a ring of `packets` receive times hold ids `highest - packets + 1 .. highest`.
    The in-order case (`replay_id == highest + 1`) costs one comparison and two stores.
    """

    __slots__ = ("_highest", "_seconds", "_size", "_times")

    def __init__(self, packets: int = 64, seconds: float = 15.0) -> None:
        if not 0 <= packets <= MAX_REPLAY_WINDOW:
            raise ValueError(f"replay window must be within 0..{MAX_REPLAY_WINDOW} packets")
        if not 0 <= seconds <= MAX_TIME_BACKTRACK:
            raise ValueError(f"replay window time must be within 0..{MAX_TIME_BACKTRACK} s")
        self._size = packets
        self._seconds = float(seconds)
        self._highest = 0
        self._times = [_UNSEEN] * packets

    @property
    def highest(self) -> int:
        """The largest replay id accepted so far (0 before the first)."""
        return self._highest

    def reset(self) -> None:
        self._highest = 0
        self._times = [_UNSEEN] * self._size

    def check_and_record(self, replay_id: int, now: float) -> None:
        highest = self._highest
        if replay_id > highest:
            size = self._size
            if size == 0:
                if highest and replay_id != highest + 1:
                    raise ReplayError(f"replay id {replay_id} after {highest}: gap")
                self._highest = replay_id
                return
            times = self._times
            gap = replay_id - highest
            if gap == 1:
                times[replay_id % size] = now
            else:
                if gap > size:
                    gap = size + 1
                # the ids between the old highest and this one are unseen
                for skipped in range(replay_id - gap + 1, replay_id):
                    times[skipped % size] = _UNSEEN
                times[replay_id % size] = now
            self._highest = replay_id
            return
        if replay_id <= 0:
            raise ReplayError("replay id 0 is never valid")
        size = self._size
        if highest - replay_id >= size:
            raise ReplayError(f"replay id {replay_id} too old (highest {highest}, window {size})")
        times = self._times
        if times[replay_id % size] != _UNSEEN:
            raise ReplayError(f"replay id {replay_id} already seen")
        seconds = self._seconds
        if seconds:
            limit = now - seconds
            for later in range(replay_id + 1, highest + 1):
                seen_at = times[later % size]
                if seen_at != _UNSEEN and seen_at < limit:
                    raise ReplayError(
                        f"replay id {replay_id} arrived more than {seconds:g} s after {later}"
                    )
        times[replay_id % size] = now


class LongReplayWindow:
    """Replay check for long-form ids `(replay_id, time)` (control-channel wrapping).

    `time` is the sender's clock when its counter started: an older time is rejected, a newer
    time restarts the window (the peer restarted or rolled its counter over).
    """

    __slots__ = ("_time", "_window")

    def __init__(self, packets: int = 64, seconds: float = 15.0) -> None:
        self._window = ReplayWindow(packets, seconds)
        self._time: int | None = None

    @property
    def time(self) -> int | None:
        """The sender time of the current sequence (None before the first packet)."""
        return self._time

    @property
    def highest(self) -> int:
        return self._window.highest

    def check_and_record(self, replay_id: int, time: int, now: float) -> None:
        if replay_id <= 0:
            raise ReplayError("replay id 0 is never valid")
        current = self._time
        if current is None or time > current:
            self._window.reset()
            self._window.check_and_record(replay_id, now)
            self._time = time
            return
        if time < current:
            raise ReplayError(f"replay time {time} is older than the current {current}")
        self._window.check_and_record(replay_id, now)
