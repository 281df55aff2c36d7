"""Polling with a deadline, for tests that watch real processes.

The timeout only bounds how long a test waits for something that must happen; it is never a
timed assertion (figures belong to the benchmarks).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def poll_until(check: Callable[[], Any], timeout: float, step: float = 0.05) -> Any:
    """Call ``check`` every ``step`` seconds until it returns something truthy (returned), or
    ``timeout`` seconds pass (None)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(step)
    return None
