"""Backups that are proven: engines dump a database, storage keeps the files with
a manifest, verification restores them into a scratch target, and retention
(pure) decides what to drop. Each environment owns an `envbackups.EnvBackups`
(schedule, the gate before a deploy, restore); the API and CLI reach it through
the controller."""
