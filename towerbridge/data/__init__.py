"""Datasets: the built-in synthetic log, reading and validating tables, splits."""
