"""`every: DURATION` as the cron schedule a Kubernetes CronJob needs, when one says the same.

Pure. Validation (spec/model.py) refuses, for runtime kubernetes, an interval
that has none; the renderer (kube/render.py, through kube/cron.py) writes the
schedule. A cron field can only step evenly through its range, so an interval
is expressible when it divides that range (a minute, an hour, a day) or is one
week; anything else is refused with the schedules that come closest, never
rounded silently.
"""

from __future__ import annotations

from ondeck.errors import UserError

MINUTE = 60
HOUR = 60 * MINUTE
DAY = 24 * HOUR
WEEK = 7 * DAY


def every_as_cron(seconds: float, where: str) -> str:
    """The cron expression firing every `seconds`, aligned to the clock; UserError if none."""
    whole = round(seconds)
    if whole != seconds or whole % MINUTE:
        raise UserError(
            f"{where}: every {_text(seconds)} cannot run on Kubernetes, whose CronJobs fire "
            "at most once a minute on whole minutes; use a whole number of minutes or a "
            "schedule (cron)"
        )
    if whole < HOUR and HOUR % whole == 0:
        minutes = whole // MINUTE
        return "* * * * *" if minutes == 1 else f"*/{minutes} * * * *"
    if whole < DAY and whole % HOUR == 0 and DAY % whole == 0:
        hours = whole // HOUR
        return "0 * * * *" if hours == 1 else f"0 */{hours} * * *"
    if whole == DAY:
        return "0 0 * * *"
    if whole == WEEK:
        return "0 0 * * 0"
    raise UserError(
        f"{where}: every {_text(seconds)} has no cron equivalent (a cron step restarts at "
        "each hour or day, so the gaps would be uneven); on Kubernetes use an interval that "
        "divides an hour (e.g. 10m, 15m) or a day (e.g. 2h, 6h), 1d, 7d, or write a "
        "schedule (cron)"
    )


def _text(seconds: float) -> str:
    for unit, size in (("d", DAY), ("h", HOUR), ("m", MINUTE)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
