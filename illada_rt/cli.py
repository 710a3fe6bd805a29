"""The illada-rt command line (the bundled demo model unless --model is given).

    illada-rt generate "PROMPT" [options]   an answer to a prompt
    illada-rt chat [options]                a conversation (checkpoints with a chat template)
    illada-rt info [--model DIR]            configuration, size, build
    illada-rt bench [bench options]         the generation benchmark (bench/bench_generate.py)

Errors print one line, `illada-rt: error: ...`, and exit with status 2.
"""
from __future__ import annotations

import argparse
import os
import runpy
import sys
import time

from . import DEMO_MODEL_DIR


def _model_args(p: argparse.ArgumentParser):
    p.add_argument("--model", default=DEMO_MODEL_DIR, help="checkpoint directory (default: the bundled demo model)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu")


def _generation_args(p: argparse.ArgumentParser):
    p.add_argument("--gen-length", type=int, default=64, help="answer tokens (default 64)")
    p.add_argument("--block-length", type=int, default=16, help="tokens per block (default 16)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: gen-length)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--cfg-scale", type=float, default=0.0, help="classifier-free guidance scale")
    p.add_argument("--remasking", default="low_confidence", choices=["low_confidence", "random"])
    p.add_argument("--threshold", type=float, default=None, help="confidence-threshold parallel decoding")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop-at-eos", action="store_true", help="end the answer at the first EOS")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="illada-rt", description="Masked-diffusion LM inference runtime")
    sub = ap.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate an answer to a text prompt")
    g.add_argument("prompt", help="prompt text ('-' reads it from standard input)")
    _model_args(g)
    _generation_args(g)
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the checkpoint's chat template")
    c = sub.add_parser("chat", help="talk to a checkpoint with a chat template (one line per turn)")
    _model_args(c)
    _generation_args(c)
    i = sub.add_parser("info", help="model configuration, size and build information")
    _model_args(i)
    sub.add_parser("bench", help="run bench/bench_generate.py (arguments pass through)", add_help=False)
    return ap


def _generation_kwargs(args) -> dict:
    return dict(gen_length=args.gen_length, block_length=args.block_length, steps=args.steps or args.gen_length,
                temperature=args.temperature, cfg_scale=args.cfg_scale, remasking=args.remasking,
                threshold=args.threshold, seed=args.seed, stop_at_eos=args.stop_at_eos)


def _load(args):
    from .engine import Engine

    return Engine.from_pretrained(args.model, device=args.device, dtype=args.dtype)


def _answer(eng, ids, mask, kwargs) -> str:
    start = time.perf_counter()
    out = eng.generate(ids, attention_mask=mask, **kwargs)
    seconds = time.perf_counter() - start
    print(f"[{kwargs['gen_length']} tokens, {out.nfe} steps, {seconds:.2f} s, "
          f"{kwargs['gen_length'] / seconds:.1f} tokens/s]", file=sys.stderr)
    return eng.codec.decode(out.answers[0, : int(out.answer_lengths[0])].tolist())


def _generate(args) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    eng = _load(args)
    ids, _ = eng.encode_prompts([prompt], chat=args.chat)
    answer = _answer(eng, ids, None, _generation_kwargs(args))
    print(answer if args.chat else prompt + answer)
    return 0


def _chat(args) -> int:
    eng = _load(args)
    codec = eng.codec
    if not codec.chat_template:
        raise ValueError(f"{args.model} has no chat template; use `illada-rt generate` instead")
    messages = []
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line:
            return 0
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line.strip()})
        ids = codec.encode(codec.render_chat(messages), add_special_tokens=False)
        answer = _answer(eng, [ids], None, _generation_kwargs(args)).strip()
        messages.append({"role": "assistant", "content": answer})
        print(("model> " if interactive else "") + answer, flush=True)


def _info(args) -> int:
    from . import ops
    from .config import ModelConfig

    cfg = ModelConfig.from_dir(args.model)
    n = cfg.num_parameters
    print(f"model: {args.model}")
    for field in ("d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "mlp_hidden_size", "vocab_size",
                  "embedding_size", "weight_tying", "mask_token_id", "eos_token_id", "max_sequence_length"):
        print(f"  {field}: {getattr(cfg, field)}")
    print(f"parameters: {n:,}")
    print("weights in memory: " + ", ".join(f"{d} {n * b / 2**30:.3f} GiB" for d, b in (("float32", 4), ("bfloat16", 2))))
    info = ops.build_info()
    print("build: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    count, reason = ops.cuda_devices()
    print(f"CUDA devices visible: {count}" + (f" ({reason})" if reason else ""))
    return 0


def _bench(argv) -> int:
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "bench_generate.py")
    if not os.path.isfile(script):
        raise ValueError(f"{script} not found: `illada-rt bench` needs the source tree (pip install -e .)")
    sys.argv = [script, *argv]
    runpy.run_path(script, run_name="__main__")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["bench"]:
            return _bench(argv[1:])
        args = _parser().parse_args(argv)
        return {"generate": _generate, "chat": _chat, "info": _info}[args.command](args)
    except (ValueError, NotImplementedError, OSError) as e:
        print(f"illada-rt: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
