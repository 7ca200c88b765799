"""Benchmarks that print ratios measured side by side in one process run (`scripts/bench.py`)."""
