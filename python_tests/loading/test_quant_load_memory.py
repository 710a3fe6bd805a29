"""Quantizing at load holds about one tensor at a time, never the dense model (bench/quant_load.py,
run on a synthetic checkpoint whose dense blocks are several times the bound checked here)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MiB = 2 ** 20

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads RssAnon from /proc")


@pytest.fixture(scope="module")
def loads(tmp_path_factory, kernel_impl):
    out = tmp_path_factory.mktemp("quant_load") / "load.json"
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, os.path.join(ROOT, "bench", "quant_load.py"), "--layers", "4",
                    "--formats", "int8,int4", "--out", str(out)], check=True, env=env, capture_output=True,
                   timeout=600)
    result = json.loads(out.read_text())
    return {row["load"]: row for row in result["rows"]}


def test_quantize_at_load_never_holds_the_dense_blocks(loads):
    dense = loads["dense"]
    # 4 layers of d 1024 / FFN 2816 blocks: 200 MiB in float32, against a bound of 64 MiB.
    dense_blocks_mib = 4 * (4 * 1024 * 1024 + 3 * 1024 * 2816) * 4 / MiB
    bound_mib = 3 * dense["largest_tensor_mib"] + 16
    assert dense_blocks_mib > 3 * bound_mib
    for fmt in ("int8", "int4"):
        row = loads[fmt]
        assert row["extra_mib"] < bound_mib, row
        assert row["host_held_mib"] < row["model_mib"] + 16, row   # nothing beyond the model stays behind
        assert row["host_peak_mib"] < dense["host_held_mib"] - 100, row


def test_stored_int8_checkpoint_loads_without_a_transient_copy(loads):
    row = loads["int8 stored"]
    assert row["extra_mib"] < loads["dense"]["largest_tensor_mib"] + 16, row
    assert row["host_peak_mib"] < loads["int8"]["model_mib"] + 16, row
