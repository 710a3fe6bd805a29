"""bench/load_test.py on the demo model, briefly: every answer complete and equal to Engine.generate alone."""
import importlib.util
import json
import os

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("httpx")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # the repository
SCRIPT = os.path.join(ROOT, "bench", "load_test.py")


def test_load_test_smoke(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("load_test", SCRIPT)
    load_test = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(load_test)
    out = tmp_path / "load.json"
    status = load_test.main(["--clients", "2", "--duration", "3", "--gen-length", "16", "--block-length", "8",
                             "--cases", "4", "--json", str(out)])
    summary = json.loads(out.read_text())
    assert status == 0, summary["errors"]
    assert summary["failed"] == 0 and summary["completed"] >= 2 and summary["completed"] == summary["requests"]
    assert summary["exact"] == summary["requests"] and summary["token_agreement"] == 1.0   # on the CPU: bit-equal
    assert summary["latency_p50_s"] > 0 and summary["requests_per_s"] > 0
    assert "| requests |" in capsys.readouterr().out


def test_percentile_is_nearest_rank():
    spec = importlib.util.spec_from_file_location("load_test", SCRIPT)
    load_test = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(load_test)
    values = list(range(1, 101))
    assert [load_test.percentile(values, q) for q in (50, 90, 99, 100)] == [50, 90, 99, 100]
    assert load_test.percentile([3.0], 99) == 3.0


def test_token_agreement_and_its_option():
    spec = importlib.util.spec_from_file_location("load_test", SCRIPT)
    load_test = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(load_test)
    assert load_test.token_agreement([1, 2, 3, 4], [1, 2, 9, 4]) == (3, 4)
    assert load_test.token_agreement([1, 2], [1, 2, 3]) == (2, 3) and load_test.token_agreement([], []) == (0, 0)
    assert load_test.parse_args([]).agreement == 1.0 and load_test.parse_args([]).device == "cpu"
    assert load_test.parse_args(["--device", "cuda", "--agreement", "0.97"]).agreement == 0.97
    for bad in ("0", "1.5"):
        with pytest.raises(SystemExit):
            load_test.parse_args(["--agreement", bad])
