"""The time as the controller and supervisors read it: a seam tests replace.

`SystemClock` is the wall clock; an integration test passes a clock it moves
by hand, so backoffs and deadlines are reached without sleeping.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Seconds since the epoch, as a float."""

    def time(self) -> float: ...


class SystemClock:
    def time(self) -> float:
        return time.time()


SYSTEM_CLOCK = SystemClock()
