"""The illada-rt command line: `generate` and `info` (bundled demo model by default)."""
from __future__ import annotations

import argparse
import sys
import time

from . import DEMO_MODEL_DIR


def _add_model_args(p: argparse.ArgumentParser):
    p.add_argument("--model", default=DEMO_MODEL_DIR, help="checkpoint directory (default: the bundled demo model)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="illada-rt", description="Masked-diffusion LM inference runtime")
    sub = ap.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate an answer to a text prompt")
    g.add_argument("prompt", help="prompt text")
    _add_model_args(g)
    g.add_argument("--gen-length", type=int, default=64)
    g.add_argument("--block-length", type=int, default=16)
    g.add_argument("--steps", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--cfg-scale", type=float, default=0.0)
    g.add_argument("--remasking", default="low_confidence", choices=["low_confidence", "random"])
    g.add_argument("--threshold", type=float, default=None, help="confidence-threshold parallel decoding")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the checkpoint's chat template")
    g.add_argument("--stop-at-eos", action="store_true", help="end the answer at the first EOS")
    i = sub.add_parser("info", help="model configuration, size and build information")
    _add_model_args(i)
    return ap


def _generate(args) -> int:
    from .engine import Engine

    eng = Engine.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    ids, mask = eng.encode_prompts([args.prompt], chat=args.chat)
    start = time.perf_counter()
    out = eng.generate(ids, gen_length=args.gen_length, block_length=args.block_length, steps=args.steps,
                       temperature=args.temperature, cfg_scale=args.cfg_scale, remasking=args.remasking,
                       threshold=args.threshold, seed=args.seed, stop_at_eos=args.stop_at_eos)
    seconds = time.perf_counter() - start
    n = int(out.answer_lengths[0])
    print(args.prompt + eng.codec.decode(out.answers[0, :n].tolist()))
    print(f"[{args.gen_length} tokens, {out.nfe} steps, {seconds:.2f} s, {args.gen_length / seconds:.1f} tokens/s]",
          file=sys.stderr)
    return 0


def _info(args) -> int:
    from . import ops
    from .config import ModelConfig

    cfg = ModelConfig.from_dir(args.model)
    n = cfg.num_parameters
    print(f"model: {args.model}")
    for field in ("d_model", "n_layers", "n_heads", "n_kv_heads", "mlp_hidden_size", "vocab_size",
                  "embedding_size", "weight_tying", "mask_token_id", "eos_token_id", "max_sequence_length"):
        print(f"  {field}: {getattr(cfg, field)}")
    print(f"parameters: {n:,}")
    print("weights memory: " + ", ".join(f"{d} {n * b / 2**30:.3f} GiB" for d, b in (("float32", 4), ("bfloat16", 2))))
    print(f"build: {ops.build_info()}")
    count, reason = ops.cuda_devices()
    print(f"CUDA devices visible: {count}" + (f" ({reason})" if reason else ""))
    return 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"generate": _generate, "info": _info}[args.command](args)
    except (ValueError, NotImplementedError, OSError) as e:
        print(f"illada-rt: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
