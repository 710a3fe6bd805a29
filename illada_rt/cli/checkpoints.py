"""What a checkpoint holds (`info`: configuration, size, build, kernels) and a quantized copy (`convert`)."""
from __future__ import annotations

import time

import torch

from .. import ops
from ..device import resolve_device
from ..loading import Checkpoint, quantize
from ..quant.spec import QuantSpec, check_spec, estimate_weight_bytes
from .options import model_args


def add_parsers(sub):
    i = sub.add_parser("info", help="model configuration, size and build information")
    model_args(i)
    i.set_defaults(run=info)
    q = sub.add_parser("convert", help="write a quantized checkpoint (loads directly with --model)")
    q.add_argument("--model", required=True, help="bf16/fp32 checkpoint directory")
    q.add_argument("--out", required=True, help="output directory (new or empty)")
    q.add_argument("--format", required=True, choices=["int8", "int4", "fp8"])
    q.add_argument("--group-size", type=int, default=128, help="int4 inputs per scale (default 128)")
    q.add_argument("--quantize-head", action="store_true", help="quantize the LM head too")
    q.add_argument("--no-zero-point", action="store_true", help="int4: symmetric groups without zero points")
    q.set_defaults(run=convert)


def info(args) -> int:
    checkpoint = Checkpoint.open(args.model)     # config.json, read once
    cfg = checkpoint.cfg
    n = cfg.num_parameters
    print(f"model: {args.model}")
    for field in ("d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "mlp_hidden_size", "vocab_size",
                  "embedding_size", "weight_tying", "mask_token_id", "eos_token_id", "max_sequence_length"):
        print(f"  {field}: {getattr(cfg, field)}")
    print(f"parameters: {n:,}")
    print("weights in memory: " + ", ".join(f"{d} {n * b / 2**30:.3f} GiB" for d, b in (("float32", 4), ("bfloat16", 2))))
    stored = checkpoint.quantization
    if stored is not None:
        print(f"quantization (stored): {stored.to_section()}")
    spec = stored or (QuantSpec(args.quantization, args.group_size, True, args.quantize_head)
                      if args.quantization else None)
    if spec is not None:
        check_spec(cfg, spec, torch.device("cpu"))
        print(f"weights in memory, {spec.format}: " + ", ".join(
            f"{d} {estimate_weight_bytes(cfg, spec, b) / 2**30:.3f} GiB" for d, b in (("float32", 4), ("bfloat16", 2))))
    build = ops.build_info()
    print("build: " + ", ".join(f"{k}={v}" for k, v in build.items()))
    count, reason = ops.cuda_devices()
    print(f"CUDA devices visible: {count}" + (f" ({reason})" if reason else ""))
    dev = resolve_device(args.device)
    print(f"kernels on {dev}: {ops.select_kernels(args.kernels, dev).describe()}")
    return 0


def convert(args) -> int:
    start = time.perf_counter()
    quantize(args.model, args.out, args.format, group_size=args.group_size, quantize_head=args.quantize_head,
             zero_point=not args.no_zero_point)
    print(f"wrote {args.format} checkpoint {args.out} in {time.perf_counter() - start:.1f} s")
    return 0
