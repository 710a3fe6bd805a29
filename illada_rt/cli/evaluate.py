"""`illada-rt eval`: lm-evaluation-harness tasks through the engine (integrations/lm_eval.py).

    illada-rt eval --model DIR --tasks gsm8k,mmlu [--model-args steps=256,threshold=0.9] [--limit N]
                   [--num-fewshot K] [--gen-kwargs max_gen_toks=512] [--include-path DIR]
                   [--output results.json] [--log-samples] [--confirm-run-unsafe-code]

Prints the harness's table on stdout and writes its results JSON; a progress bar over the requests
goes to stderr. Needs the optional extra `pip install "illada_rt[eval]"`, imported only when the
command runs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from ..config import DEMO_MODEL_DIR


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("eval", help="benchmark accuracy with lm-evaluation-harness (needs illada_rt[eval])")
    p.add_argument("--model", default=DEMO_MODEL_DIR, help="checkpoint directory (default: the bundled demo model)")
    p.add_argument("--tasks", required=True, help="comma-separated harness tasks or groups, e.g. gsm8k,mmlu")
    p.add_argument("--model-args", default="",
                   help="k=v,... settings of the illada_rt harness model: device, dtype, quantization, kernels, "
                        "gen_length, block_length, steps, threshold, cache, cfg_scale, remasking, temperature, "
                        "mc_num, batch_size, seed, chat, check_greedy, ... (see README)")
    p.add_argument("--gen-kwargs", default=None,
                   help="k=v,... over every task's generation settings, e.g. max_gen_toks=512")
    p.add_argument("--limit", type=_limit, default=None,
                   help="examples per task (a fraction of each task below 1)")
    p.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples (default: the task's)")
    p.add_argument("--include-path", action="append", default=None,
                   help="a folder of extra task YAML files (repeatable)")
    p.add_argument("--output", default=None, help="write the harness's results JSON here")
    p.add_argument("--log-samples", action="store_true", help="include every request and answer in the JSON")
    p.add_argument("--confirm-run-unsafe-code", action="store_true",
                   help="let tasks run the generated code (HumanEval, MBPP; also needs HF_ALLOW_CODE_EVAL=1)")
    p.set_defaults(run=run)
    return p


def _limit(text: str):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"--limit must be positive, got {text}")
    return int(value) if value >= 1 and value.is_integer() else value


def run(args) -> int:
    """Run the tasks, print the table, write the JSON. Returns the exit status."""
    try:
        from ..integrations.lm_eval import run_tasks
        from lm_eval.utils import handle_non_serializable, make_table
    except ImportError as e:
        raise RuntimeError(str(e)) from None
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise ValueError("--tasks names no task")
    results = run_tasks(args.model, tasks, model_args=args.model_args, limit=args.limit,
                        num_fewshot=args.num_fewshot, include_path=args.include_path, log_samples=args.log_samples,
                        gen_kwargs=args.gen_kwargs, confirm_run_unsafe_code=args.confirm_run_unsafe_code)
    print(make_table(results))
    if results.get("groups"):
        print(make_table(results, "groups"))
    if args.output:
        folder = os.path.dirname(os.path.abspath(args.output))
        os.makedirs(folder, exist_ok=True)
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2, default=handle_non_serializable, ensure_ascii=False)
        print(f"illada-rt: results written to {args.output}", file=sys.stderr)
    return 0
