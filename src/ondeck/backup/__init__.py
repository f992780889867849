"""Backups that are proven: engines dump a database, storage keeps the files with
a manifest, verification restores them into a scratch target, and retention
(pure) decides what to drop."""
