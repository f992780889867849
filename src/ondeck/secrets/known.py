"""Every secret value this process has loaded, for the masking of what it shows.

`resolve.load` adds to it; `ondeck up`'s log filter (`redact.RedactingFilter`)
and the diffs read it, so a value that somehow reached a message is masked
there too. Values only; never written anywhere.
"""

from __future__ import annotations

from collections.abc import Iterable

VALUES: set[str] = set()


def remember(values: Iterable[str]) -> None:
    VALUES.update(values)
