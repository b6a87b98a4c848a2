"""Benchmarks beside bench.py: timing helpers that start subprocesses and write temp files
(kept out of the library)."""
