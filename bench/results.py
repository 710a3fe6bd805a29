"""Where results go and how they print: one JSON file per run, a markdown table last.

    bench/results/<device-slug>_<YYYY-MM-DD>[_<suffix>].json     (a free name: _2, _3, ... appended)

--out DIR puts the file in DIR instead; --out FILE.json writes exactly there.
The file is rewritten after every configuration, so a run cut short keeps what it measured.
gpu_check.sh packs a run's files into one results.json ({file name: content}); unpack it with

    python bench/results.py unpack OUT/results.json [bench/results]
    python bench/results.py table bench/results/FILE.json      # its markdown table, device and date
"""
from __future__ import annotations

import json
import math
import os
import sys
from typing import Iterable, Optional, Sequence, Tuple

from device_info import device_slug

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

# the printed tables: (header, row key, format spec)
GENERATE_COLUMNS = [
    ("model", "model", ""), ("P+G", "lengths", ""), ("batch", "batch", ""), ("schedule", "schedule", ""),
    ("mode", "mode", ""), ("quant", "quant", ""), ("path", "path", ""), ("status", "status", ""),
    ("ms/step", "ms_per_step", ".2f"), ("tokens/s", "tokens_per_s", ".1f"), ("x ref", "speedup", ".2f"),
    ("TFLOP/s", "tflop_per_s", ".3g"), ("% peak FLOP", "pct_flops", ".1f"), ("GB/s", "gb_per_s", ".3g"),
    ("% peak BW", "pct_bytes", ".1f"), ("weights GiB", "weights_gib", ".3g"), ("peak GiB", "peak_memory_gib", ".1f"),
    ("timing", "timing", "")]
KERNEL_COLUMNS = [
    ("kernel", "kernel", ""), ("shape", "shape", ""), ("dtype", "dtype", ""), ("ours ms", "ours_ms", ".4g"),
    ("torch ms", "torch_ms", ".4g"), ("x torch", "speedup", ".2f"), ("unit", "unit", ""),
    ("ours", "ours_rate", ".4g"), ("torch", "torch_rate", ".4g"), ("% peak", "pct_peak", ".1f"),
    ("max diff", "max_diff", ".2g")]
LOAD_COLUMNS = [
    ("load", "load", ""), ("seconds", "seconds", ".2f"), ("host peak MiB", "host_peak_mib", ".1f"),
    ("host held MiB", "host_held_mib", ".1f"), ("extra MiB", "extra_mib", ".1f"), ("model MiB", "model_mib", ".1f"),
    ("largest tensor MiB", "largest_tensor_mib", ".1f"), ("GPU peak MiB", "gpu_peak_mib", ".1f")]
COLUMNS_BY_KIND = {"bench_kernels": KERNEL_COLUMNS, "quant_load": LOAD_COLUMNS}


def result_path(out: Optional[str], info: dict, suffix: str = "") -> str:
    """The JSON path for this run (see the module docstring); creates the folder."""
    if out and out.endswith(".json"):
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        return out
    folder = out or RESULTS_DIR
    os.makedirs(folder, exist_ok=True)
    stem = f"{device_slug(info)}_{info['date']}" + (f"_{suffix}" if suffix else "")
    path, n = os.path.join(folder, stem + ".json"), 1
    while os.path.exists(path):
        n += 1
        path = os.path.join(folder, f"{stem}_{n}.json")
    return path


def _clean(x):
    """JSON without NaN/inf (written as null)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def write_json(path: str, result: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(_clean(result), f, indent=1)
    os.replace(tmp, path)


def fmt(x, spec: str = ".2f") -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return format(x, spec) if math.isfinite(x) else "-"
    return str(x)


def markdown_table(rows: Iterable[dict], columns: Sequence[Tuple[str, str, str]]) -> str:
    """columns: (header, row key, format spec); a missing or None value prints "-"."""
    lines = ["| " + " | ".join(h for h, _, _ in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(key), spec) for _, key, spec in columns) + " |")
    return "\n".join(lines)


def pack(paths: Sequence[str], out: str) -> None:
    """Many result files -> one JSON object {file name: content}."""
    packed = {}
    for path in paths:
        with open(path, encoding="utf-8") as f:
            packed[os.path.basename(path)] = json.load(f)
    write_json(out, packed)


def unpack(packed_path: str, folder: str = RESULTS_DIR) -> list:
    """The inverse of pack: one file per entry in `folder` (an existing name is not overwritten)."""
    with open(packed_path, encoding="utf-8") as f:
        packed = json.load(f)
    os.makedirs(folder, exist_ok=True)
    written = []
    for name, content in packed.items():
        path = os.path.join(folder, os.path.basename(name))
        if os.path.exists(path):
            print(f"exists, kept: {path}")
            continue
        write_json(path, content)
        written.append(path)
    return written


def table(path: str) -> str:
    """The markdown table of a result file, under a line naming the device, dtype and date."""
    with open(path, encoding="utf-8") as f:
        run = json.load(f)
    columns = COLUMNS_BY_KIND.get(run.get("kind"), GENERATE_COLUMNS)
    where = run.get("gpu") or f"{run.get('cpu')}, {run.get('torch_threads')} threads"
    return (f"{where}, {run.get('dtype')}, torch {run.get('torch')}, {run.get('date')}\n\n"
            + markdown_table(run.get("rows", []), columns))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "table":
        print(table(sys.argv[2]))
    elif len(sys.argv) >= 3 and sys.argv[1] == "pack":
        pack(sys.argv[3:], sys.argv[2])
    elif len(sys.argv) in (3, 4) and sys.argv[1] == "unpack":
        for p in unpack(*sys.argv[2:]):
            print(p)
    else:
        sys.exit("usage: results.py table FILE.json | pack OUT.json FILE.json... | unpack PACKED.json [FOLDER]")
