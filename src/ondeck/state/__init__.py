"""The pure heart of ondeck: desired state, live state, their diff and the plan.

Nothing here performs I/O or reads a clock: time comes in as data.
"""
