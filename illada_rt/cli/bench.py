"""`illada-rt bench`: bench/bench_generate.py of the source tree, its arguments passed through."""
from __future__ import annotations

import os
import runpy
import sys

# illada_rt/cli/bench.py -> the source tree's root
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def add_parser(sub):
    sub.add_parser("bench", help="run bench/bench_generate.py (arguments pass through)", add_help=False)


def run(argv) -> int:
    script = os.path.join(ROOT, "bench", "bench_generate.py")
    if not os.path.isfile(script):
        raise ValueError(f"{script} not found: `illada-rt bench` needs the source tree (pip install -e .)")
    sys.argv = [script, *argv]
    runpy.run_path(script, run_name="__main__")
    return 0
