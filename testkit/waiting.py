"""Polling with a deadline, for tests, benches and HIL runs that watch real processes.

The timeout only bounds how long to wait for something that must happen; it is never a timed
assertion (figures belong to the benchmarks).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def poll_until(check: Callable[[], Any], timeout: float, step: float = 0.05) -> Any:
    """Call ``check`` every ``step`` seconds until it returns something truthy (returned), or
    ``timeout`` seconds pass (None). ``check`` runs at least once, and once more at the end."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        time.sleep(min(step, left))
