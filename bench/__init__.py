"""Benchmark harness of the DiG toolkit: model sweeps, kernel benchmark, figures and report.

Run it through `python bench.py` (see `python bench.py --help`); the measurement protocol is in
bench/PROTOCOL.md. The modules the command line needs before it measures anything (cli, spec,
registry, errors) import neither torch nor pandas, so `--help` and usage errors answer at once.
"""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
