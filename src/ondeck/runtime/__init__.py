"""Runtimes: where instances actually run (local processes, containers, Kubernetes)."""
