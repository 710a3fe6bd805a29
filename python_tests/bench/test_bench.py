"""CPU smoke runs of the benchmarks (bench/bench_generate.py, bench/bench_kernels.py) on tiny
synthetic shapes, and their helpers: result fields present and finite, the reference on the
engine's shared weights, the per-step clock, device metadata without NVML. No timing assertions."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import bench_generate  # noqa: E402
import device_info  # noqa: E402
import measure  # noqa: E402
import results  # noqa: E402
import synthetic  # noqa: E402

from illada_rt import reference  # noqa: E402
from illada_rt.config import expected_shapes  # noqa: E402


def run_script(name, *args):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", name), *args], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    return r


def only_json(folder):
    files = os.listdir(folder)
    assert len(files) == 1 and files[0].endswith(".json"), files
    with open(os.path.join(folder, files[0])) as f:
        return files[0], json.load(f)


def positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def check_run_header(data):
    for key in ("date", "time_utc", "device", "torch", "python", "extension", "cpu", "torch_threads", "settings"):
        assert key in data, key
    assert positive(data["limits"]["matmul"]["tflop_per_s"]) and positive(data["limits"]["copy"]["gb_per_s"])


def test_bench_generate_cpu_smoke(tmp_path):
    r = run_script("bench_generate.py", "--n-layers", "2", "--prompt-len", "8", "--gen-length", "16",
                   "--block-length", "8", "--batch", "1,2", "--schedules", "steps,threshold", "--modes", "exact,dual",
                   "--max-steps", "2", "--ref-max-steps", "2", "--repeats", "1", "--matmul-size", "256",
                   "--copy-mib", "16", "--out", str(tmp_path))
    name, data = only_json(tmp_path)
    assert name == f"cpu_{data['date']}.json"
    check_run_header(data)
    rows = data["rows"]
    # per (batch, schedule): engine exact, reference exact, engine dual
    assert len(rows) == 2 * 2 * 3 and all(row["status"] == "ok" for row in rows), rows
    for row in rows:
        for key in ("ms_per_step", "tokens_per_s", "nfe", "flops_per_step", "bytes_per_step", "tflop_per_s",
                    "gb_per_s", "roofline_flops", "roofline_bytes"):
            assert positive(row[key]), (key, row)
        assert row["gen_length"] == 16 and row["block_length"] == 8
        assert row["kernels"] == ("default" if row["path"] == "engine" else "-")
        if row["path"] == "engine":
            assert positive(row["speedup"])
    step_timed = [row for row in rows if row["schedule"] == "steps" and row["mode"] == "exact"]
    # 2 blocks of 8: the exact top-k rows run 2 steps (8 tokens each) and scale to 16 steps
    assert {row["timing"] for row in step_timed} == {"median of 1 runs of 2 steps"}
    assert all(row["nfe"] == 2 and row["steps"] == 16 for row in step_timed)
    for row in step_timed:
        assert row["tokens_per_s"] == pytest.approx(row["batch"] * 16 / (16 * row["ms_per_step"] / 1e3))
    assert all(row["timing"] == "median of 1 runs" for row in rows if row not in step_timed)
    assert "speed-up over the reference path" in r.stdout
    table = r.stdout.rstrip().splitlines()
    assert table[-len(rows) - 2].startswith("| model |") and all(line.startswith("| ") for line in table[-len(rows):])
    assert results.table(str(tmp_path / name)).splitlines()[-len(rows) - 2:] == table[-len(rows) - 2:]


def test_bench_generate_time_budget_skips_and_still_writes(tmp_path):
    out = tmp_path / "run.json"
    run_script("bench_generate.py", "--n-layers", "1", "--prompt-len", "8", "--gen-length", "8", "--block-length", "8",
               "--quant", "none,int8", "--time-budget", "0.001", "--matmul-size", "128", "--copy-mib", "4",
               "--out", str(out))
    rows = json.loads(out.read_text())["rows"]
    assert [row["quant"] for row in rows][:2] == ["none", "none"]
    # int8: skipped too where the package quantizes at load, else one row naming why it cannot
    assert all(row["status"] == "skipped (time budget)" or row["status"].startswith("error: quantization 'int8'")
               for row in rows), rows
    # weights_gib: the model's weight bytes; int8 blocks (the 4 MiB float32 embedding stays dense)
    weights = {row["quant"]: row["weights_gib"] for row in rows if row.get("weights_gib")}
    assert set(weights) == {"none", "int8"} and weights["int8"] < 0.75 * weights["none"], rows


def test_bench_generate_custom_vs_torch_kernels_in_one_run(tmp_path):
    r = run_script("bench_generate.py", "--n-layers", "1", "--prompt-len", "8", "--gen-length", "16",
                   "--block-length", "8", "--max-steps", "2", "--ref-max-steps", "2", "--repeats", "1",
                   "--kernels", "custom,torch", "--matmul-size", "128", "--copy-mib", "4", "--out", str(tmp_path))
    _, data = only_json(tmp_path)
    rows = data["rows"]
    assert all(row["status"] == "ok" for row in rows), rows
    # one engine row per kernels choice, the reference once (it does not use the kernels)
    assert [(row["path"], row["kernels"]) for row in rows] == [("engine", "custom"), ("reference", "-"),
                                                               ("engine", "torch")]
    custom, _, torch_row = rows
    assert custom["vs_torch_kernels"] == pytest.approx(custom["tokens_per_s"] / torch_row["tokens_per_s"])
    assert torch_row["vs_torch_kernels"] == 1.0 and positive(custom["speedup"]) and positive(torch_row["speedup"])
    assert data["settings"]["kernel_choices"] == ["custom", "torch"]
    assert "kernels custom over torch:" in r.stdout and "| x torch |" in r.stdout


def test_bench_generate_one_rank_and_two_in_one_run(tmp_path):
    """--tensor-parallel 1,2: the two-rank engine's rows carry its ratio to one process and the share
    of its time in collectives (a synthetic model goes through a temporary checkpoint)."""
    r = run_script("bench_generate.py", "--n-layers", "1", "--prompt-len", "8", "--gen-length", "16",
                   "--block-length", "8", "--max-steps", "2", "--repeats", "1", "--paths", "engine",
                   "--tensor-parallel", "1,2", "--matmul-size", "128", "--copy-mib", "4", "--out", str(tmp_path))
    rows = only_json(tmp_path)[1]["rows"]
    assert all(row["status"] == "ok" for row in rows), rows
    one, two = rows
    assert (one["tensor_parallel"], two["tensor_parallel"]) == (1, 2)
    assert two["vs_one_rank"] == pytest.approx(two["tokens_per_s"] / one["tokens_per_s"])
    assert 0 < two["collective_share"] < 1 and "collective_share" not in one
    assert two["weights_gib"] < 0.6 * one["weights_gib"]
    assert "2 ranks over one process:" in r.stdout and "| x 1 rank |" in r.stdout


def test_bench_generate_kernel_choices():
    assert bench_generate.parse_args([]).kernel_choices == ["default"]   # the engine's default: no keyword
    assert bench_generate.parse_args(["--kernels", "custom,torch"]).kernel_choices == ["custom", "torch"]
    assert bench_generate.parse_args(["--kernels", "auto", "--kernels", "attention=torch,remask=custom",
                                      "--kernels", "auto"]).kernel_choices == ["auto", "attention=torch,remask=custom"]
    with pytest.raises(SystemExit):
        bench_generate.parse_args(["--kernels", "cuda"])


def test_kernel_ratios_compare_with_the_torch_row_of_the_same_configuration():
    config = dict(model="m", quant="none", lengths="8+16", batch=1, schedule="steps", mode="exact", path="engine")
    rows = [dict(config, kernels="custom", tokens_per_s=30.0), dict(config, kernels="torch", tokens_per_s=10.0),
            dict(config, kernels="auto", batch=2, tokens_per_s=5.0),   # no torch row at batch 2
            dict(config, kernels="-", path="reference", tokens_per_s=1.0)]
    bench_generate.add_kernel_ratios(rows)
    assert [row.get("vs_torch_kernels") for row in rows] == [3.0, 1.0, None, None]


def test_bench_kernels_cpu_smoke(tmp_path):
    r = run_script("bench_kernels.py", "--repeats", "2", "--matmul-size", "256", "--copy-mib", "16",
                   "--out", str(tmp_path))
    name, data = only_json(tmp_path)
    assert name == f"cpu_{data['date']}_kernels.json"
    check_run_header(data)
    assert {row["kernel"] for row in data["rows"]} == {"attention", "remask", "rmsnorm", "rope", "swiglu"}
    for row in data["rows"]:
        assert row["status"] == "ok", row
        for key in ("ours_ms", "torch_ms", "ours_rate", "torch_rate", "speedup", "pct_peak"):
            assert positive(row[key]), (key, row)
        assert row["max_diff"] <= (0.1 if row["kernel"] == "remask" else 1e-4), row
    assert r.stdout.rstrip().splitlines()[-1].startswith("| swiglu |")


@pytest.mark.parametrize("name", ["llada-8b", "illada-8b"])
def test_synthetic_8b_shapes(name):
    cfg = synthetic.synthetic_config(name)
    facts = dict(llada=(32, 12288, 126464, False), illada=(8, 14336, 155136, True))[name.split("-")[0]]
    assert (cfg.n_kv_heads, cfg.mlp_hidden_size, cfg.vocab_size, cfg.weight_tying) == facts
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.head_dim) == (32, 4096, 32, 128)
    assert 7.0e9 < cfg.num_parameters < 8.1e9


def test_reference_on_the_engines_shared_weights_matches_the_engine():
    cfg = synthetic.synthetic_config("small", n_layers=2)
    weights = dict(synthetic.synthetic_weights(cfg, torch.float32, torch.device("cpu")))
    assert {n: tuple(t.shape) for n, t in weights.items()} == expected_shapes(cfg)
    assert all(torch.isfinite(t).all() for t in weights.values())
    eng, ref, label = synthetic.build(None, "small", 2, torch.float32, torch.device("cpu"))
    state = synthetic.shared_state(eng.model)
    assert all(torch.equal(state[n], weights[n]) for n in weights)  # the same draws, now packed
    q = state["model.transformer.blocks.1.q_proj.weight"]
    assert q.untyped_storage().data_ptr() == eng.model.layers[1].wqkv.untyped_storage().data_ptr()  # a view
    ids = torch.randint(0, cfg.vocab_size, (2, 24))
    torch.testing.assert_close(eng.logits(ids), reference.ReferenceModel(cfg, weights)(ids), atol=1e-4, rtol=1e-4)
    assert label == "synthetic small (2 layers)"


def test_timed_steps_shrink_only_the_exact_top_k_schedule():
    row = dict(steps=512, gen_length=512, block_length=32, schedule="steps", mode="exact")
    assert bench_generate.timed_steps(row, 0) == 512 and bench_generate.timed_steps(row, 600) == 512
    assert bench_generate.timed_steps(row, 3) == 16 and bench_generate.timed_steps(row, 40) == 32
    assert bench_generate.timed_steps(dict(row, mode="dual"), 3) == 512
    assert bench_generate.timed_steps(dict(row, schedule="threshold"), 3) == 512


def test_time_runs_warms_up_then_stops_at_the_deadline():
    calls = []
    seconds, nfe = measure.time_runs(lambda: calls.append(1) or 7, torch.device("cpu"), repeats=2)
    assert len(calls) == 3 and nfe == 7 and seconds >= 0
    with pytest.raises(measure.OutOfTime):
        measure.time_runs(lambda: 1, torch.device("cpu"), 1, deadline=0.0)


def test_device_info_without_pynvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    assert "not installed" in device_info.nvml_info(0)["nvml"]
    info = device_info.device_info(torch.device("cpu"))
    assert info["device"] == "cpu" and info["cpu"] and "cuda" in info["extension"]
    assert device_info.device_slug(info) == "cpu"
    assert device_info.device_slug(dict(gpu="NVIDIA H100 80GB HBM3")) == "nvidia-h100-80gb-hbm3"


def test_nvml_failure_is_recorded_not_raised():
    out = device_info.nvml_snapshot(0)  # no driver here: a reason; with a GPU: numbers
    assert "nvml" in out or "sm_clock_mhz" in out


def test_result_paths_never_overwrite(tmp_path):
    info = dict(gpu="NVIDIA H200", date="2026-01-02")
    first = results.result_path(str(tmp_path), info, "x")
    assert os.path.basename(first) == "nvidia-h200_2026-01-02_x.json"
    results.write_json(first, dict(v=float("nan")))
    assert json.loads(open(first).read()) == dict(v=None)
    assert os.path.basename(results.result_path(str(tmp_path), info, "x")) == "nvidia-h200_2026-01-02_x_2.json"
    assert results.result_path(str(tmp_path / "a.json"), info) == str(tmp_path / "a.json")


def test_pack_and_unpack_round_trip(tmp_path):
    files = []
    for i in range(2):
        files.append(str(tmp_path / f"gpu_2026-01-0{i + 1}.json"))
        results.write_json(files[-1], dict(rows=[dict(ms_per_step=float(i))]))
    results.pack(files, str(tmp_path / "packed.json"))
    written = results.unpack(str(tmp_path / "packed.json"), str(tmp_path / "unpacked"))
    assert sorted(os.path.basename(p) for p in written) == ["gpu_2026-01-01.json", "gpu_2026-01-02.json"]
    assert json.loads(open(written[0]).read())["rows"][0]["ms_per_step"] in (0.0, 1.0)
    assert results.unpack(str(tmp_path / "packed.json"), str(tmp_path / "unpacked")) == []  # never overwrites


def test_bench_generate_rejects_unknown_names():
    for option, value in (("--modes", "exakt"), ("--synthetic", "llada-70b"), ("--quant", "int3")):
        with pytest.raises(SystemExit):
            bench_generate.parse_args([option, value])
