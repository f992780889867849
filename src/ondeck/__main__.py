"""`python -m ondeck` is the `ondeck` command."""

from ondeck.cli import main

main()
