"""Where results go and how they print: one JSON file per run, a markdown table last.

    bench/results/<device-slug>_<YYYY-MM-DD>[_<suffix>].json     (a free name: _2, _3, ... appended)

--out DIR puts the file in DIR instead; --out FILE.json writes exactly there.
The file is rewritten after every configuration, so a run cut short keeps what it measured.
gpu_check.sh packs a run's files into one results.json ({file name: content}); unpack it with

    python bench/results.py unpack OUT/results.json [bench/results]
    python bench/results.py table bench/results/FILE.json      # its markdown table, device and date

gpu_check.sh also writes its summary.md through this module (after every phase):

    python bench/results.py gpu-summary STATE_DIR OUT_DIR ELAPSED_S

Standard library only at import (the device metadata is imported where a result path is made), so
packing and the summary work even where torch or the extension do not import.
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
from typing import Iterable, List, Optional, Sequence, Tuple

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

# the printed tables: (header, row key, format spec)
GENERATE_COLUMNS = [
    ("model", "model", ""), ("P+G", "lengths", ""), ("batch", "batch", ""), ("schedule", "schedule", ""),
    ("mode", "mode", ""), ("quant", "quant", ""), ("kernels", "kernels", ""), ("TP", "tensor_parallel", ""),
    ("path", "path", ""), ("status", "status", ""), ("ms/step", "ms_per_step", ".2f"),
    ("tokens/s", "tokens_per_s", ".1f"), ("x ref", "speedup", ".2f"), ("x torch", "vs_torch_kernels", ".2f"),
    ("x 1 rank", "vs_one_rank", ".2f"), ("% collectives", "collective_pct", ".0f"),
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
    from device_info import device_slug  # imports torch: here, not at module level
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


# ---------------------------------------------------------------------------- gpu_check.sh's summary

_OUTCOMES = ("failed", "error", "passed", "skipped", "xfailed", "xpassed")
_STATS_LINE = re.compile(r"^=+ (.*?) in [0-9.]+s\b.*=+$")
_VERBOSE_RESULT = re.compile(r"\b(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")
# errors after which every later CUDA call of the process fails: its later failures are consequences
_STICKY_CUDA = re.compile(r"illegal memory access|unspecified launch failure|misaligned address|illegal instruction|"
                          r"device-side assert|cudaErrorIllegalAddress|cudaErrorLaunchFailure|"
                          r"cudaErrorMisalignedAddress")


def parse_pytest_log(text: str) -> dict:
    """What a pytest run (-v -rfEs) printed: counts {outcome: n}, failed ["FAILED id - message"],
    skips {reason: n}, sticky (the first CUDA error line, or None), complete (the closing stats
    line was printed). A run killed before its closing line is counted from its per-test lines (-v)."""
    lines = text.splitlines()
    counts = {}
    stats = [m.group(1) for m in map(_STATS_LINE.match, lines) if m]
    if stats:
        for n, word in re.findall(r"(\d+) (\w+)", stats[-1]):
            word = "error" if word == "errors" else word
            if word in _OUTCOMES:
                counts[word] = counts.get(word, 0) + int(n)
    summary_at = next((i for i, line in enumerate(lines) if "short test summary info" in line), len(lines))
    failed = [line for line in lines[summary_at:] if line.startswith(("FAILED ", "ERROR "))]
    if not stats or not failed:
        verbose = {"PASSED": "passed", "FAILED": "failed", "ERROR": "error", "SKIPPED": "skipped",
                   "XFAIL": "xfailed", "XPASS": "xpassed"}
        seen = {}
        for line in lines[:summary_at]:
            m = _VERBOSE_RESULT.search(line)
            if m and "::" in line and not line.startswith(("FAILED ", "ERROR ")):
                seen[verbose[m.group(1)]] = seen.get(verbose[m.group(1)], 0) + 1
                if m.group(1) in ("FAILED", "ERROR") and not stats:
                    failed.append(f"{m.group(1)} " + next(w for w in line.split() if "::" in w))
        counts = counts if stats else seen
    skips = {}   # reason -> count (the file:line before the reason dropped)
    for m in (re.match(r"^SKIPPED \[(\d+)\] (?:[^:]+:\d+: )?(.*)$", line) for line in lines[summary_at:]):
        if m:
            skips[m.group(2)] = skips.get(m.group(2), 0) + int(m.group(1))
    sticky = next((line.strip() for line in lines  # error lines ("E   ..."), not the quoted source
                   if line.startswith(("E ", "FAILED ", "ERROR ")) and _STICKY_CUDA.search(line)), None)
    return dict(counts=counts, failed=failed, skips=skips, sticky=sticky, complete=bool(stats))


def _counts_text(counts: dict) -> str:
    return ", ".join(f"{counts[k]} {k}" for k in _OUTCOMES if counts.get(k)) or "no tests ran"


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _bench_status(out_dir: str) -> List[str]:
    """Per packed result file, how many rows are ok and which are not (errors, oom, skips)."""
    try:
        with open(os.path.join(out_dir, "results.json"), encoding="utf-8") as f:
            packed = json.load(f)
    except (OSError, ValueError):
        return []
    lines = []
    for name, run in packed.items():
        if isinstance(run, dict) and "requests" in run:   # load_test.py
            lines.append(f"- {name}: {run.get('completed')} of {run.get('requests')} requests complete, "
                         f"{run.get('exact')} equal to Engine.generate alone; errors {run.get('errors') or 'none'}")
            continue
        rows = [r for r in (run.get("rows", []) if isinstance(run, dict) else []) if isinstance(r, dict)]
        # bench_generate / bench_kernels rows have a status; bench_quant_matmul's an error or skipped key
        status = [r.get("status") or ("error: " + r["error"] if "error" in r else
                                      "skipped: " + str(r["skipped"]) if "skipped" in r else "ok") for r in rows]
        bad = [(r, st) for r, st in zip(rows, status) if st != "ok"]
        lines.append(f"- {name}: {len(rows) - len(bad)} of {len(rows)} rows ok")
        for r, st in bad[:8]:
            what = ", ".join(str(r[k]) for k in ("model", "kernel", "format", "shape", "n", "k", "m", "kernels",
                                                 "lengths", "batch", "mode", "path", "load") if r.get(k) is not None)
            lines.append(f"  - {what}: {st}")
        if len(bad) > 8:
            lines.append(f"  - ... {len(bad) - 8} more")
    return lines


def gpu_check_summary(state_dir: str, out_dir: str, elapsed_s: int) -> str:
    """summary.md of gpu_check.sh from its state folder: run.txt (key=value lines) and phases.tsv
    (phase, status, seconds, cap, log, pytest logs in the state folder separated by spaces)."""
    run = dict(line.split("=", 1) for line in _read(os.path.join(state_dir, "run.txt")).splitlines() if "=" in line)
    phases = [line.split("\t") + [""] * 6 for line in _read(os.path.join(state_dir, "phases.tsv")).splitlines()
              if line.strip()]
    out = [f"# gpu_check {run.get('mode', '?')} on {run.get('device', '?')}: {elapsed_s} s of a "
           f"{run.get('budget', '?')} s budget", "",
           f"{run.get('started', '')}; git {run.get('git', '?')}; {run.get('python', '')}; {run.get('torch', '')}; "
           f"{run.get('cpus', '?')} CPUs, pytest workers up to {run.get('workers', '?')}", "",
           "| phase | status | seconds | cap | tests | log |", "|---|---|---|---|---|---|"]
    failed, skips, sticky, prints = [], {}, [], []
    failures = cut = 0
    for name, status, seconds, cap, log, pytest_logs, *_ in phases:
        tests = ""
        if pytest_logs.strip():
            total, complete = {}, True
            for path in pytest_logs.split():
                parsed = parse_pytest_log(_read(path))
                for k, v in parsed["counts"].items():
                    total[k] = total.get(k, 0) + v
                complete &= parsed["complete"]
                label = os.path.basename(path).rsplit(".", 1)[0]
                failed += [f"- {name}: {line}" for line in parsed["failed"]]
                for reason, n in parsed["skips"].items():
                    skips[(name, reason)] = skips.get((name, reason), 0) + n
                if parsed["sticky"]:
                    sticky.append(f"- {name} ({label}): {parsed['sticky'][:300]}")
                prints += [line.strip() for line in _read(path).splitlines() if "bf16 vs float32" in line]
            tests = _counts_text(total) + ("" if complete else " (cut off: counted from the per-test lines)")
        failures += status.startswith(("FAILED", "TIMEOUT"))
        cut += status.startswith(("SKIPPED (no time", "CUT SHORT"))
        out.append(f"| {name} | {status} | {seconds} | {cap} | {tests} | {log} |")
    verdict = ("FAILED: " + str(failures) + " phase(s) failed or timed out" if failures else
               "ok: every phase that ran passed")
    if cut:
        verdict += f"; {cut} phase(s) skipped or cut short for lack of time (not failures)"
    out += ["", f"RESULT: {verdict}"]
    if failed:
        out += ["", f"## Failed tests ({len(failed)}; tracebacks in the logs)", ""] + failed[:400]
        if len(failed) > 400:
            out.append(f"- ... and {len(failed) - 400} more in the logs")
    if sticky:
        out += ["", "## CUDA errors that poison their process (later failures of that process may be consequences)",
                ""] + sticky
    if skips:
        out += ["", "## Skipped tests, by reason", ""] + [f"- {name}: {n} x {reason}"
                                                         for (name, reason), n in list(skips.items())[:60]]
    if prints:
        out += ["", "## bf16 vs float32 (test_cuda_engine.py)", ""] + [f"    {line}" for line in dict.fromkeys(prints)]
    bench = _bench_status(out_dir)
    if bench:
        out += ["", "## Benchmark rows (results.json)", ""] + bench
    tables = [line for line in _read(os.path.join(out_dir, "bench.log")).splitlines() if line.startswith("|")]
    if tables:
        out += ["", "## Benchmark tables (bench.log)", ""] + tables
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "table":
        print(table(sys.argv[2]))
    elif len(sys.argv) == 5 and sys.argv[1] == "gpu-summary":
        summary = gpu_check_summary(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        with open(os.path.join(sys.argv[3], "summary.md.tmp"), "w", encoding="utf-8") as f:
            f.write(summary)
        os.replace(os.path.join(sys.argv[3], "summary.md.tmp"), os.path.join(sys.argv[3], "summary.md"))
    elif len(sys.argv) >= 3 and sys.argv[1] == "pack":
        pack(sys.argv[3:], sys.argv[2])
    elif len(sys.argv) in (3, 4) and sys.argv[1] == "unpack":
        for p in unpack(*sys.argv[2:]):
            print(p)
    else:
        sys.exit("usage: results.py table FILE.json | pack OUT.json FILE.json... | unpack PACKED.json [FOLDER] | "
                 "gpu-summary STATE_DIR OUT_DIR ELAPSED_S")
