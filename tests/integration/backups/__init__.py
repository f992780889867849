"""Backup tests: a real PostgreSQL server, restic, SQLite under a writer."""
