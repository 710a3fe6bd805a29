"""What loading costs per format: seconds and peak host memory, dense against quantized.

    python bench/quant_load.py                         # synthetic "medium" checkpoint (bf16 on disk), CPU
    python bench/quant_load.py --model DIR --device cuda --dtype bfloat16 --out load.json

Loads, each in a fresh process so one cannot warm or fragment the next:
  dense          the checkpoint as it is, in --dtype
  int8/int4/fp8  quantized at load, tensor by tensor
  int8 stored    the int8 checkpoint written by illada_rt.quantize, loaded as stored
Columns:
  seconds             load_model wall time: read, convert, quantize, and on the device
  host peak MiB       peak growth of the process's anonymous resident memory (RssAnon: heap and
                      private mappings, not the page cache of the memory-mapped weight files)
                      during the load, sampled every millisecond and after every tensor
  host held MiB       that growth once the load has returned, the model still alive: what the
                      model keeps in host memory (on the CPU, tensors used as stored stay mapped
                      from the weight file, outside RssAnon; on a GPU, next to nothing)
  extra MiB           host peak minus host held: what the load needed besides its result
  model MiB           the loaded model's weight bytes (codes, scales, zeros and the dense rest)
  largest tensor MiB  the checkpoint's largest tensor as stored, the unit of "one tensor at a time"
  GPU peak MiB        torch.cuda.max_memory_allocated during the load (CUDA only)
Large allocations are made to go back to the system when freed (MALLOC_MMAP_THRESHOLD_), so
the resident size follows what the load holds rather than what the allocator keeps.
The JSON is rewritten after every load, so a run cut short keeps the loads done; a load that fails
is recorded with its error (the others still run) and makes the exit status 1.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
MiB = 2 ** 20
# A checkpoint big enough that the dense model (about 0.2 GB in bf16) dwarfs one tensor (6 MB),
# small enough to write and load in seconds on a laptop: 8 layers, d 1024, FFN 2816, untied head.
MEDIUM = dict(model_type="llada", rms_norm_eps=1e-5, d_model=1024, n_heads=8, n_kv_heads=8, n_layers=8,
              mlp_hidden_size=2816, vocab_size=8192, embedding_size=8192, rope_theta=10000.0,
              weight_tying=False, mask_token_id=3, eos_token_id=1, pad_token_id=0, max_sequence_length=2048)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def rss_anon_bytes() -> int:
    """This process's anonymous resident memory (Linux /proc/self/status RssAnon); 0 elsewhere."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class AnonPeak:
    """Peak of rss_anon_bytes() between enter and exit: a thread samples every millisecond and
    sample() may be called at known high points (after each tensor)."""

    def __init__(self, interval_s: float = 0.001):
        self.interval_s, self.base, self.peak = interval_s, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self, *_) -> None:
        self.peak = max(self.peak, rss_anon_bytes())

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self):
        self.base = self.peak = rss_anon_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.sample()

    @property
    def growth(self) -> int:
        return self.peak - self.base


def largest_tensor_bytes(model_dir: str) -> int:
    """The largest tensor in the directory's safetensors files, from their headers alone."""
    largest = 0
    for name in os.listdir(model_dir):
        if not name.endswith(".safetensors"):
            continue
        with open(os.path.join(model_dir, name), "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_len))
        for key, entry in header.items():
            if key != "__metadata__":
                start, end = entry["data_offsets"]
                largest = max(largest, end - start)
    return largest


def measure_load(model_dir: str, quantization: str, device: str, dtype: str, group_size: int) -> dict:
    """One load in this process (run it in a fresh one): seconds and memory, as in the module docstring."""
    from illada_rt.loading import load_model
    from illada_rt.model import weight_bytes

    dev = torch.device(device)
    if dev.type == "cuda":
        torch.empty(1, device=dev)  # the CUDA context exists before the baseline
        torch.cuda.reset_peak_memory_stats(dev)
    gc.collect()
    with AnonPeak() as host:
        start = time.perf_counter()
        model = load_model(model_dir, DTYPES[dtype], dev, progress=host.sample,
                           quantization=quantization or None, group_size=group_size)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seconds = time.perf_counter() - start
    gc.collect()
    held = rss_anon_bytes() - host.base  # the model is still alive
    row = dict(seconds=seconds, host_peak_mib=host.growth / MiB, host_held_mib=held / MiB,
               extra_mib=(host.growth - held) / MiB, model_mib=weight_bytes(model)["total"] / MiB,
               largest_tensor_mib=largest_tensor_bytes(model_dir) / MiB)
    if dev.type == "cuda":
        row["gpu_peak_mib"] = torch.cuda.max_memory_allocated(dev) / MiB
    return row


def run_fresh(model_dir: str, quantization: str, device: str, dtype: str, group_size: int) -> dict:
    """measure_load in a new Python process, large frees returned to the system at once."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import quant_load; "
            "print(json.dumps(quant_load.measure_load(*sys.argv[2:6], int(sys.argv[6]))))")
    done = subprocess.run([sys.executable, "-c", code, HERE, model_dir, quantization, device, dtype, str(group_size)],
                          env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"loading {model_dir} with quantization {quantization or 'none'} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_synthetic(model_dir: str, raw: dict, dtype: torch.dtype) -> None:
    """config.json and model.safetensors of random weights in the real layout."""
    from safetensors.torch import save_file
    from illada_rt import ModelConfig
    from synthetic import synthetic_weights

    os.makedirs(model_dir, exist_ok=True)
    cfg = ModelConfig.from_dict(raw, source="synthetic medium")
    weights = {name: t.contiguous() for name, t in synthetic_weights(cfg, dtype, torch.device("cpu"))}
    save_file(weights, os.path.join(model_dir, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(model_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(raw, f, indent=1)


def main(argv=None) -> dict:
    from device_info import device_info
    from quant_accuracy import group_size_for
    from results import LOAD_COLUMNS, markdown_table, result_path, write_json
    import illada_rt
    from illada_rt import ModelConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="checkpoint directory (default: a synthetic one in a temporary directory)")
    ap.add_argument("--layers", type=int, default=MEDIUM["n_layers"], help="layers of the synthetic checkpoint")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: float32 on CPU, else bfloat16")
    ap.add_argument("--formats", default="int8,int4,fp8", help="comma-separated formats quantized at load")
    ap.add_argument("--no-stored", action="store_true", help="skip writing and loading the int8 checkpoint")
    ap.add_argument("--out", default=None, help="JSON file or folder (default bench/results/)")
    args = ap.parse_args(argv)
    dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    formats = [f for f in args.formats.split(",") if f]

    info = device_info(torch.device(args.device))
    rows = []
    result = dict(info, kind="quant_load", model=args.model or f"synthetic medium, {args.layers} layers, bf16",
                  dtype=dtype, group_size=None, rows=rows)
    path = result_path(args.out, info, "quant_load")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model
        if model_dir is None:
            model_dir = os.path.join(tmp, "medium")
            write_synthetic(model_dir, dict(MEDIUM, n_layers=args.layers), torch.bfloat16)
        group_size = result["group_size"] = group_size_for(ModelConfig.from_dir(model_dir))
        loads = [("dense", model_dir, "")] + [(f, model_dir, f) for f in formats]
        if not args.no_stored:
            loads.append(("int8 stored", os.path.join(tmp, "int8"), ""))
        for label, load_dir, quantization in loads:
            try:
                if label == "int8 stored":
                    illada_rt.quantize(model_dir, load_dir, "int8")
                row = dict(load=label, **run_fresh(load_dir, quantization, args.device, dtype, group_size))
                print(f"{label}: {row['seconds']:.2f} s, host peak {row['host_peak_mib']:.1f} MiB", file=sys.stderr)
            except (RuntimeError, ValueError, OSError) as e:
                row = dict(load=label, error=str(e).strip().splitlines()[-1][:300])
                print(f"{label}: failed: {e}", file=sys.stderr)
            rows.append(row)
            write_json(path, result)
    write_json(path, result)
    print(markdown_table(rows, LOAD_COLUMNS))
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    sys.exit(1 if any("error" in row for row in main()["rows"]) else 0)
