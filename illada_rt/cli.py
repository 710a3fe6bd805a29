"""The illada-rt command line (the bundled demo model unless --model is given).

    illada-rt generate "PROMPT" [options]   an answer to a prompt (live view on a terminal)
    illada-rt chat [options]                a conversation (checkpoints with a chat template)
    illada-rt infill "TEXT with <mask>"     fill masked tokens anywhere in a text
    illada-rt info [--model DIR]            configuration, size, build
    illada-rt convert --model DIR --out DIR --format int8|int4|fp8   write a quantized checkpoint
    illada-rt serve [--model DIR] [--port 8000]   an OpenAI-style HTTP server (needs illada_rt[serve])
    illada-rt bench [bench options]         the generation benchmark (bench/bench_generate.py)

Errors print one line, `illada-rt: error: ...`, and exit with status 2.
"""
from __future__ import annotations

import argparse
import os
import runpy
import sys
import time

from . import DEMO_MODEL_DIR, cli_serve


def _model_args(p: argparse.ArgumentParser):
    p.add_argument("--model", default=DEMO_MODEL_DIR, help="checkpoint directory (default: the bundled demo model)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--kernels", default=None,
                   help="which implementation runs each op family: auto (the compiled kernels where the build "
                        "has code for the device, else torch), custom, torch, or per family, e.g. "
                        "attention=torch,remask=custom (default: $ILLADA_KERNELS, else auto)")
    p.add_argument("--quantization", default=None, choices=["int8", "int4", "fp8"],
                   help="quantize the weights while loading (a quantized checkpoint is used as stored)")
    p.add_argument("--group-size", type=int, default=128, help="int4 inputs per scale (default 128)")
    p.add_argument("--quantize-head", action="store_true", help="quantize the LM head too")


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
    p.add_argument("--cache", default=None, choices=["prefix", "dual"], help="block KV cache (approximate)")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="illada-rt", description="Masked-diffusion LM inference runtime")
    sub = ap.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate an answer to a text prompt")
    g.add_argument("prompt", help="prompt text ('-' reads it from standard input)")
    _model_args(g)
    _generation_args(g)
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the checkpoint's chat template")
    g.add_argument("--live", action=argparse.BooleanOptionalAction, default=None,
                   help="redraw the canvas after every step (default: on when stdout is a terminal)")
    c = sub.add_parser("chat", help="talk to a checkpoint with a chat template (one line per turn)")
    _model_args(c)
    _generation_args(c)
    f = sub.add_parser("infill", help="fill the masked tokens of a text")
    f.add_argument("text", help="text with mask markers, one per token to fill ('-' reads standard input)")
    _model_args(f)
    f.add_argument("--mask-marker", default=None, help="marker string (default: the tokenizer's mask token)")
    f.add_argument("--steps", type=int, default=None, help="denoising steps (default: one per mask)")
    f.add_argument("--block-length", type=int, default=None, help="masks per block (default: all in one)")
    f.add_argument("--temperature", type=float, default=0.0)
    f.add_argument("--remasking", default="low_confidence", choices=["low_confidence", "random"])
    f.add_argument("--threshold", type=float, default=None)
    f.add_argument("--seed", type=int, default=0)
    i = sub.add_parser("info", help="model configuration, size and build information")
    _model_args(i)
    q = sub.add_parser("convert", help="write a quantized checkpoint (loads directly with --model)")
    q.add_argument("--model", required=True, help="bf16/fp32 checkpoint directory")
    q.add_argument("--out", required=True, help="output directory (new or empty)")
    q.add_argument("--format", required=True, choices=["int8", "int4", "fp8"])
    q.add_argument("--group-size", type=int, default=128, help="int4 inputs per scale (default 128)")
    q.add_argument("--quantize-head", action="store_true", help="quantize the LM head too")
    q.add_argument("--no-zero-point", action="store_true", help="int4: symmetric groups without zero points")
    cli_serve.add_parser(sub)
    sub.add_parser("bench", help="run bench/bench_generate.py (arguments pass through)", add_help=False)
    return ap


def _generation_kwargs(args) -> dict:
    return dict(gen_length=args.gen_length, block_length=args.block_length, steps=args.steps or args.gen_length,
                temperature=args.temperature, cfg_scale=args.cfg_scale, remasking=args.remasking,
                threshold=args.threshold, seed=args.seed, stop_at_eos=args.stop_at_eos, cache=args.cache)


def _load(args):
    from .engine import Engine

    def show(done, total):
        print(f"\rloading weights {done}/{total} [{'#' * (20 * done // total):<20}]", end="", file=sys.stderr)
        if done == total:
            print(file=sys.stderr)

    return Engine.from_pretrained(args.model, device=args.device, dtype=args.dtype,
                                  progress=show if sys.stderr.isatty() else None, quantization=args.quantization,
                                  quantize_head=args.quantize_head, group_size=args.group_size,
                                  kernels=args.kernels)


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
    shown = "" if args.chat else prompt
    if args.live if args.live is not None else sys.stdout.isatty():
        return _generate_live(eng, ids, shown, _generation_kwargs(args))
    print(shown + _answer(eng, ids, None, _generation_kwargs(args)))
    return 0


def _generate_live(eng, ids, shown: str, kwargs) -> int:
    """Redraw the answer after every step: masked tokens as a shade, the rest decoded."""
    from .live_view import LiveView, render_canvas

    view, prompt_len, final = LiveView(sys.stdout, shown), ids.shape[1], ""
    start = time.perf_counter()
    for event in eng.stream(ids, every_step=True, **kwargs):
        if event.kind == "step":
            answer = event.tokens[0, prompt_len:].tolist()
            view.draw(render_canvas(eng.codec, answer, eng.cfg.mask_token_id), f"[block {event.block}, step {event.nfe}]")
        else:
            final = event.text[0]
            nfe = event.nfe
    view.finish(final)
    seconds = time.perf_counter() - start
    print(f"[{kwargs['gen_length']} tokens, {nfe} steps, {seconds:.2f} s]", file=sys.stderr)
    return 0


def _infill(args) -> int:
    text = sys.stdin.read() if args.text == "-" else args.text
    eng = _load(args)
    print(eng.infill_text(text, mask_marker=args.mask_marker, steps=args.steps, block_length=args.block_length,
                          temperature=args.temperature, remasking=args.remasking, threshold=args.threshold,
                          seed=args.seed))
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
    import torch

    from . import ops
    from .config import ModelConfig
    from .loading.checkpoint import read_section
    from .quant.spec import QuantSpec, check_spec, estimate_weight_bytes

    cfg = ModelConfig.from_dir(args.model)
    n = cfg.num_parameters
    print(f"model: {args.model}")
    for field in ("d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "mlp_hidden_size", "vocab_size",
                  "embedding_size", "weight_tying", "mask_token_id", "eos_token_id", "max_sequence_length"):
        print(f"  {field}: {getattr(cfg, field)}")
    print(f"parameters: {n:,}")
    print("weights in memory: " + ", ".join(f"{d} {n * b / 2**30:.3f} GiB" for d, b in (("float32", 4), ("bfloat16", 2))))
    stored = read_section(args.model)
    if stored is not None:
        print(f"quantization (stored): {stored.to_section()}")
    spec = stored or (QuantSpec(args.quantization, args.group_size, True, args.quantize_head)
                      if args.quantization else None)
    if spec is not None:
        check_spec(cfg, spec, torch.device("cpu"))
        print(f"weights in memory, {spec.format}: " + ", ".join(
            f"{d} {estimate_weight_bytes(cfg, spec, b) / 2**30:.3f} GiB" for d, b in (("float32", 4), ("bfloat16", 2))))
    info = ops.build_info()
    print("build: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    count, reason = ops.cuda_devices()
    print(f"CUDA devices visible: {count}" + (f" ({reason})" if reason else ""))
    from .device import resolve_device
    dev = resolve_device(args.device)
    print(f"kernels on {dev}: {ops.select_kernels(args.kernels, dev).describe()}")
    return 0


def _convert(args) -> int:
    from .loading import quantize

    start = time.perf_counter()
    quantize(args.model, args.out, args.format, group_size=args.group_size, quantize_head=args.quantize_head,
             zero_point=not args.no_zero_point)
    print(f"wrote {args.format} checkpoint {args.out} in {time.perf_counter() - start:.1f} s")
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
        return {"generate": _generate, "chat": _chat, "infill": _infill, "info": _info,
                "convert": _convert, "serve": cli_serve.run}[args.command](args)
    except (ValueError, NotImplementedError, OSError, RuntimeError) as e:
        print(f"illada-rt: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
