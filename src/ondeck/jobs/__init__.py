"""Scheduled jobs: when a job is due (`schedule`, pure) and its runs (`runner`)."""
