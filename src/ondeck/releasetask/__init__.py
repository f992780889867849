"""Release tasks (`release: [argv]`): run once per release, before any of its instances start.

`record.py` holds the durable record and the pure decision (skip, wait for an
attempt still running, collect its result, or run); `runner.py` carries it out
with real processes; `__main__.py` is the small wrapper each task runs under,
so its exit code survives a controller killed mid-task.
"""
