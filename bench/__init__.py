"""Benchmark harness of the DiG toolkit: model sweeps, kernel benchmark, figures and report.

Run it through `python bench.py` (see `python bench.py --help`); the measurement protocol is in
bench/PROTOCOL.md.
"""
