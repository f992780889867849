"""Progressive delivery glue: router configuration from plans, analysis from router stats."""
