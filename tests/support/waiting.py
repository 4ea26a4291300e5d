from __future__ import annotations

import time
from typing import Callable


def wait_until(condition: Callable[[], object], timeout_s: float = 60.0, what: str = "condition") -> None:
    """Poll `condition` until it is true; fail the test after `timeout_s` (a bound, not a timing check)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} not met within {timeout_s} s"
        time.sleep(0.02)
