"""What a running process costs, read from /proc: CPU time and resident memory."""

from __future__ import annotations

import os
import time


def process_usage(pid: int) -> tuple[float, int]:
    """(CPU seconds used so far, resident memory in bytes) of a live process; (0, 0) if gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/%d/status" % pid) as f:
            rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration, IndexError, ValueError):
        return 0.0, 0
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks, rss_kb * 1024


def measure(pids: list[int], seconds: float) -> list[tuple[float, int]]:
    """(CPU % of one core over the next ``seconds``, RSS bytes at the end) per pid."""
    start = [process_usage(pid)[0] for pid in pids]
    t0 = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t0
    out = []
    for pid, cpu0 in zip(pids, start, strict=True):
        cpu1, rss = process_usage(pid)
        out.append(((cpu1 - cpu0) / elapsed * 100, rss))
    return out


def percentile(values: list[float], fraction: float) -> float:
    """The value at ``fraction`` (0..1) of the sorted values (nearest rank); NaN if empty."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]
