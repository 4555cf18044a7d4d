"""The gateway benchmark's picture: per gateway, the AppVM's datagrams through the tunnel per
second across the faults, blocked periods shaded, fault events marked, and every frame seen on
the uplink outside the VPN session (a leak) drawn as a red mark.

`draw(timelines, path)` takes what `bench/gateway.py` records for each gateway:

    {"events": [(seconds, "server down"), ...],
     "blocked": [(start, end or None, "what"), ...],
     "tunnel_arrivals": [seconds, ...],      # one per datagram that came through the tunnel
     "leaks": [(seconds, "frame"), ...]}

matplotlib comes from the distribution on the system stack (Debian's python3-matplotlib) or
the package index on the newest; the Agg backend draws without a display.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

BLOCKED_COLOUR = "#f4b6b6"
TRAFFIC_COLOUR = "#2a6fb0"
LEAK_COLOUR = "#d00000"


def per_second(times: list[float], end: float) -> tuple[list[int], list[int]]:
    """(second, count) for every whole second from 0 to `end`, zeros included."""
    counts = Counter(math.floor(t) for t in times if t >= 0)
    seconds = list(range(math.ceil(end) + 1))
    return seconds, [counts.get(s, 0) for s in seconds]


def _end(timeline: dict[str, Any]) -> float:
    candidates = [0.0, *timeline["tunnel_arrivals"], *(t for t, _ in timeline["events"])]
    candidates += [t for t, _ in timeline["leaks"]]
    return max(candidates)


def draw(timelines: dict[str, dict[str, Any]], path: Path, *, title: str) -> None:
    """One panel per gateway, side by side, sharing the y axis."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit(
            "bench: matplotlib is missing (system stack: apt-get install python3-matplotlib, "
            "as `make setup` does; newest stack: pip install matplotlib)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(timelines)
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(7 * max(1, len(names)), 4.6),
                             sharey=True, squeeze=False)  # fmt: skip
    end = max((_end(t) for t in timelines.values()), default=1.0) + 1
    top = 1.0
    for ax, name in zip(axes[0], names, strict=False):
        timeline = timelines[name]
        seconds, counts = per_second(timeline["tunnel_arrivals"], end)
        top = max(top, *counts)
        ax.bar(seconds, counts, width=1.0, align="edge", color=TRAFFIC_COLOUR,
               label="AppVM datagrams through the tunnel per s")  # fmt: skip
        for n, (start, stop, _) in enumerate(timeline["blocked"]):
            ax.axvspan(start, end if stop is None else stop, color=BLOCKED_COLOUR, alpha=0.6,
                       zorder=0, label="blocked (nothing through)" if n == 0 else None)  # fmt: skip
        for when, what in timeline["events"]:
            ax.axvline(when, color="#555555", linestyle=":", linewidth=1)
            ax.text(when, 1.0, f" {what}", rotation=90, va="top", ha="right", fontsize=8,
                    transform=ax.get_xaxis_transform())  # fmt: skip
        leaks = [t for t, _ in timeline["leaks"]]
        leak_seconds, leak_counts = per_second(leaks, end)
        marked = [(s, c) for s, c in zip(leak_seconds, leak_counts, strict=True) if c]
        ax.scatter([s + 0.5 for s, _ in marked], [0] * len(marked), marker="^", s=60,
                   color=LEAK_COLOUR, zorder=5, clip_on=False,
                   label="frames on the uplink outside the VPN session")  # fmt: skip
        ax.set_title(f"{name}: {len(leaks)} uplink frames outside the session")
        ax.set_xlabel("seconds")
        ax.set_xlim(0, end)
    axes[0][0].set_ylabel("datagrams/s received through the tunnel")
    axes[0][0].set_ylim(0, top * 1.35)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
