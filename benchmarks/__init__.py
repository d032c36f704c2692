"""Benchmarks of kosmos2 against the reference implementation (``python -m benchmarks.run``)."""
