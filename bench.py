"""Benchmark CLI: `python bench.py --help`, or `python bench.py` for the main job (see bench/cli.py)."""

import signal
import sys

from bench.cli import exit_on_sigterm, main

if __name__ == "__main__":
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    sys.exit(main())
