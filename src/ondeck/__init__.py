"""ondeck: GitOps for the humble app.

A git repository states what runs in each environment; ondeck makes a host
match it and keeps it matching. See DESIGN.md for the architecture.
"""

__version__ = "0.1.0"
