"""Options shared by the subcommands, and the Engine they name."""
from __future__ import annotations

import argparse
import sys

from ..config import DEMO_MODEL_DIR
from ..engine import Engine

KERNELS_HELP = ("which implementation runs each op family: auto (the compiled kernels where the build has code "
                "for the device, else torch), custom, torch, or per family, e.g. attention=torch,remask=custom "
                "(default: $ILLADA_KERNELS, else auto)")


def model_args(p: argparse.ArgumentParser):
    p.add_argument("--model", default=DEMO_MODEL_DIR, help="checkpoint directory (default: the bundled demo model)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--kernels", default=None, help=KERNELS_HELP)
    p.add_argument("--quantization", default=None, choices=["int8", "int4", "fp8"],
                   help="quantize the weights while loading (a quantized checkpoint is used as stored)")
    p.add_argument("--group-size", type=int, default=128, help="int4 inputs per scale (default 128)")
    p.add_argument("--quantize-head", action="store_true", help="quantize the LM head too")


def parallel_args(p: argparse.ArgumentParser):
    p.add_argument("--tensor-parallel", type=int, default=1, metavar="N",
                   help="ranks the model is sharded over (one process each; on CUDA cuda:0..N-1; default 1)")


def generation_args(p: argparse.ArgumentParser):
    p.add_argument("--gen-length", type=int, default=64, help="answer tokens (default 64)")
    p.add_argument("--block-length", type=int, default=16, help="tokens per block (default 16)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: gen-length)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--cfg-scale", type=float, default=0.0, help="classifier-free guidance scale")
    p.add_argument("--remasking", default="low_confidence", choices=["low_confidence", "random"])
    p.add_argument("--threshold", type=float, default=None, help="confidence-threshold parallel decoding")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop-at-eos", action="store_true", help="end the answer at the first EOS")
    p.add_argument("--cache", default=None, choices=["prefix", "dual"], help="block KV cache (approximate)")


def generation_kwargs(args) -> dict:
    """Engine.generate's keyword arguments from generation_args' options."""
    steps = args.gen_length if args.steps is None else args.steps     # --steps 0 is an error, not the default
    return dict(gen_length=args.gen_length, block_length=args.block_length, steps=steps,
                temperature=args.temperature, cfg_scale=args.cfg_scale, remasking=args.remasking,
                threshold=args.threshold, seed=args.seed, stop_at_eos=args.stop_at_eos, cache=args.cache)


def load_engine(args) -> Engine:
    """The Engine of model_args' (and parallel_args') options; a progress bar on a terminal. Under
    torchrun, the ranks other than 0 serve rank 0's engine inside this call and then exit 0."""
    def show(done, total):
        print(f"\rloading weights {done}/{total} [{'#' * (20 * done // total):<20}]", end="", file=sys.stderr)
        if done == total:
            print(file=sys.stderr)

    engine = Engine.from_pretrained(args.model, device=args.device, dtype=args.dtype,
                                    progress=show if sys.stderr.isatty() else None, quantization=args.quantization,
                                    quantize_head=args.quantize_head, group_size=args.group_size,
                                    kernels=args.kernels, tensor_parallel=getattr(args, "tensor_parallel", 1))
    if engine.closed:      # a torchrun rank other than 0: it served rank 0's calls, and rank 0 is done
        raise SystemExit(0)
    return engine
