"""`illada-rt bench`: bench/bench_generate.py of the source tree, its arguments passed through.

The lengths are checked here first, so that a bad one is the command line's one-line error and not
a traceback from the middle of a benchmark (the reference generator asserts its lengths)."""
from __future__ import annotations

import os
import runpy
import sys

# illada_rt/cli/bench.py -> the source tree's root
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def add_parser(sub):
    sub.add_parser("bench", help="run bench/bench_generate.py (arguments pass through)", add_help=False)


def check_lengths(args) -> None:
    """ValueError naming the option where the script's parsed `args` ask for no work or for lengths
    that do not divide: every --prompt-len, --gen-length and --batch >= 1, --block-length >= 1 and
    dividing every --gen-length, --steps 0 (one token a step) or a multiple of the blocks."""
    def values(flag, text):
        try:
            out = [int(x) for x in str(text).split(",") if x]
        except ValueError:
            raise ValueError(f"{flag} must be integers separated by commas, got {text!r}") from None
        if not out or min(out) < 1:
            raise ValueError(f"{flag} must be positive integers, got {text!r}")
        return out

    values("--prompt-len", args.prompt_len)
    values("--batch", args.batch)
    block = values("--block-length", args.block_length)[0]
    if args.steps < 0:
        raise ValueError(f"--steps must be 0 (one token a step) or positive, got {args.steps}")
    for gen in values("--gen-length", args.gen_length):
        if gen % block:
            raise ValueError(f"--gen-length {gen} is not divisible by --block-length {block}")
        if args.steps and args.steps % (gen // block):
            raise ValueError(f"--steps {args.steps} is not divisible by the {gen // block} blocks of "
                             f"--gen-length {gen}")
    if args.repeats < 1:
        raise ValueError(f"--repeats must be at least 1, got {args.repeats}")


def run(argv) -> int:
    script = os.path.join(ROOT, "bench", "bench_generate.py")
    if not os.path.isfile(script):
        raise ValueError(f"{script} not found: `illada-rt bench` needs the source tree (pip install -e .)")
    sys.argv = [script, *argv]
    bench = runpy.run_path(script, run_name="bench_generate")   # its functions, without running main
    check_lengths(bench["parse_args"](argv))
    bench["main"](argv)
    return 0
