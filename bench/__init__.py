"""Benchmarks: `towerbridge bench` (perf, scale) and the stand-alone scripts beside them."""
