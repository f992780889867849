"""Command groups of the `ondeck` CLI, one typer sub-app per module, registered in cli.py."""
