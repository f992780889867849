"""The spec: `ondeck.yaml` as typed, validated, located data (pure, no I/O)."""
