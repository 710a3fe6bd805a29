"""Where results go and how they print: one JSON file per run, a markdown table last.

    bench/results/<device-slug>_<YYYY-MM-DD>[_<suffix>].json     (a free name: _2, _3, ... appended)

--out DIR puts the file in DIR instead; --out FILE.json writes exactly there.
The file is rewritten after every configuration, so a run cut short keeps what it measured.
"""
from __future__ import annotations

import json
import math
import os
from typing import Iterable, Optional, Sequence, Tuple

from device_info import device_slug

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


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
