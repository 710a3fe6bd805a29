"""The illada-rt command line (the bundled demo model unless --model is given).

    illada-rt generate "PROMPT" [options]   an answer to a prompt (live view on a terminal)
    illada-rt chat [options]                a conversation (checkpoints with a chat template)
    illada-rt infill "TEXT with <mask>"     fill masked tokens anywhere in a text
    illada-rt info [--model DIR]            configuration, size, build
    illada-rt convert --model DIR --out DIR --format int8|int4|fp8   write a quantized checkpoint
    illada-rt serve [--model DIR] [--port 8000]   an OpenAI-style HTTP server (needs illada_rt[serve])
    illada-rt bench [bench options]         the generation benchmark (bench/bench_generate.py)
    illada-rt eval --tasks T1,T2 [--model DIR]   lm-evaluation-harness tasks (needs illada_rt[eval])

Errors print one line, `illada-rt: error: ...`, and exit with status 2.

    options.py      the options shared by subcommands, and the Engine they name
    generate.py     generate, chat, infill          live_view.py   the redrawn canvas of generate
    checkpoints.py  info, convert                   serve.py       serve
    bench.py        bench                           evaluate.py    eval
"""
from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    """Each subcommand's parser names the function that runs it (args.run)."""
    from . import bench, checkpoints, evaluate, generate, serve   # torch and the engine: inside main's guard
    ap = argparse.ArgumentParser(prog="illada-rt", description="Masked-diffusion LM inference runtime")
    sub = ap.add_subparsers(dest="command", required=True)
    generate.add_parsers(sub)      # generate, chat, infill
    checkpoints.add_parsers(sub)   # info, convert
    serve.add_parser(sub)
    bench.add_parser(sub)          # its arguments pass through unparsed (main)
    evaluate.add_parser(sub)       # eval
    return ap


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["bench"]:
            from . import bench
            return bench.run(argv[1:])
        args = _parser().parse_args(argv)
        return args.run(args)
    except (ValueError, NotImplementedError, OSError, RuntimeError) as e:
        print(f"illada-rt: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:   # Ctrl-C, while loading or running: one line, the shell's status for SIGINT
        print("illada-rt: interrupted", file=sys.stderr)
        return 130


__all__ = ["main"]
