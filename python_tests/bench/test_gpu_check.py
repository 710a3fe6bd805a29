"""bench/gpu_check.sh, the one script run on a lent GPU machine, checked here so that its first GPU run
cannot fail on a script error: it parses, its test selections (folders and the `cuda` marker) split
the suite (every CUDA test in exactly one GPU phase, every other one in the rest), a run out of time
reports every phase as skipped (not failed) and exits 0, a broken
environment fails with a summary, and the summary reads pytest's output right (counts, failed tests,
CUDA errors that poison a process, a run killed before its last line).

The dry run itself (`GPU_CHECK_DEVICE=cpu bash bench/gpu_check.sh --first-contact OUT`: build, every
phase and the result packing on the CPU) rebuilds the extension, so the suite does not run it; .ci/run
does, then points GPU_CHECK_DRY_RUN_OUT at its output for test_dry_run_output below.
"""
import functools
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "bench", "gpu_check.sh")
sys.path.insert(0, os.path.join(ROOT, "bench"))
import results  # noqa: E402

OUT_FILES = {"summary.md", "results.json", "setup.log", "test_kernels.log", "test_engine.log", "test_serving.log",
             "bench.log", "test_rest.log"}


def script_text():
    with open(SCRIPT, encoding="utf-8") as f:
        return f.read()


def phase_names():
    """Every phase the script records, in order (a name's variable parts, "(...)", dropped)."""
    names = ["environment"] + re.findall(r'should_run "([^"]+)"', script_text())
    return [re.sub(r" \(.*", "", name) for name in names]


def summary_rows(summary):
    """{phase: status} from summary.md's phase table (its rows up to the first blank line)."""
    table = summary.split("| phase | status |", 1)[1].split("\n\n", 1)[0]
    rows = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[re.sub(r" \(.*", "", cells[0])] = cells[1]
    return rows


def run_check(tmp_path, *args, **env):
    """gpu_check.sh on the CPU; the build tools stubbed (cmake, ninja, pybind11), which these runs never use
    but the environment phase asks for."""
    stubs = tmp_path / "stubs"
    (stubs / "pybind11").mkdir(parents=True)
    (stubs / "pybind11" / "__init__.py").write_text("")
    for tool in ("cmake", "ninja"):
        (stubs / tool).write_text("#!/bin/sh\nexit 0\n")
        (stubs / tool).chmod(0o755)
    out = tmp_path / "out"
    # PYTHON: the script runs this interpreter (with torch), whatever python3 comes first on PATH
    env = {**os.environ, "GPU_CHECK_DEVICE": "cpu", "PYTHON": sys.executable,
           "PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(stubs), os.environ.get("PYTHONPATH")])), **env}
    r = subprocess.run(["bash", SCRIPT, *args, str(out)], capture_output=True, text=True, timeout=300, env=env)
    return r, out


def test_scripts_parse():
    for name in ("gpu_check.sh", "gpu_wheels.sh"):
        subprocess.run(["bash", "-n", os.path.join(ROOT, "bench", name)], check=True)


def script_array(var):
    """The words of the script's array VAR=(...)."""
    return re.search(rf"^{var}=\(([^)]*)\)", script_text(), re.M).group(1).split()


@functools.lru_cache(maxsize=None)
def collected(*args):
    """The node ids pytest collects, run from the repository root with these arguments."""
    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode in (0, 5), r.stdout[-3000:] + r.stderr[-3000:]   # 5: nothing collected
    return tuple(line for line in r.stdout.splitlines() if "::" in line)


def test_phase_selections_split_the_suite():
    text = script_text()
    mark = re.search(r"^GPU_MARK=(\S+)$", text, re.M).group(1)
    assert mark == "cuda"   # pyproject.toml's marker of the tests that need a GPU
    for name in ("kernel tests", "engine tests", "serving tests"):   # each GPU phase selects by the marker
        assert re.search(rf'pytest_phase "{name}" .* -m "\$GPU_MARK" -- ', text), name
    assert re.search(r'^REST_ARGS=\(.*-m "not \$GPU_MARK"', text, re.M)
    phases = {var: script_array(var) for var in ("KERNEL_TESTS", "ENGINE_TESTS", "SERVING_TESTS")}
    for var, folders in phases.items():
        assert folders, var
        for f in folders:
            assert os.path.isdir(os.path.join(ROOT, f)), f"gpu_check.sh's {var} names {f}, which is no folder"
    gpu = {var: collected("-m", mark, *folders) for var, folders in phases.items()}
    assert all(gpu.values()), {var: len(ids) for var, ids in gpu.items()}
    in_gpu = [i for ids in gpu.values() for i in ids]
    assert len(set(in_gpu)) == len(in_gpu), "a CUDA test in two GPU phases"
    suite = script_array("REST_TESTS")
    missing = set(collected("-m", mark, *suite)) - set(in_gpu)
    assert not missing, f"CUDA tests no GPU phase runs: {sorted(missing)[:10]}"
    rest = collected("-m", f"not {mark}", *suite)
    assert not set(rest) & set(in_gpu)
    assert sorted(rest + tuple(in_gpu)) == sorted(collected(*suite)), "the phases and the rest miss tests"
    # a file named for CUDA runs whole in the GPU phases, as when they named the files
    assert not [i for i in rest if os.path.basename(i.split("::")[0]).startswith("test_cuda_")]


@pytest.mark.parametrize("mode", ["--first-contact", "--full"])
def test_a_run_without_time_lists_every_phase_as_skipped_and_exits_0(tmp_path, mode):
    r, out = run_check(tmp_path, mode, GPU_CHECK_BUDGET_S="0")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert {p.name for p in out.iterdir()} <= OUT_FILES
    summary = (out / "summary.md").read_text()
    rows = summary_rows(summary)
    assert list(rows) == phase_names(), summary
    assert rows["environment"] == "ok", rows
    skipped = [s for p, s in rows.items() if p != "environment"]
    assert all(s in ("SKIPPED (no time left)", "SKIPPED (full mode only)") for s in skipped), rows
    assert ("SKIPPED (full mode only)" in skipped) == (mode == "--first-contact")
    assert "not failures" in summary and "RESULT: ok" in summary and "RESULT: ok" in r.stdout.splitlines()[-1]


def test_a_broken_environment_fails_and_still_writes_a_summary(tmp_path):
    r, out = run_check(tmp_path, "--first-contact", PYTHON="/bin/false")
    assert r.returncode == 1
    lines = (out / "summary.md").read_text().splitlines()   # the plain one: bench/results.py cannot run either
    assert "environment|FAILED (missing: torch pybind11" in "\n".join(lines)
    assert any(line.startswith("build") and "|SKIPPED (environment incomplete)|" in line for line in lines), lines
    assert any(line.startswith("kernel tests|SKIPPED (no build") for line in lines), lines


def test_unknown_options_are_refused(tmp_path):
    r, _ = run_check(tmp_path, "--fist-contact")
    assert r.returncode == 2 and "unknown option" in r.stderr


# ---------------------------------------------------------------- reading pytest's output

COMPLETE = """\
python_tests/test_cuda_x.py::test_a[1] PASSED                                 [ 25%]
python_tests/test_cuda_x.py::test_a[2] FAILED                                 [ 50%]
python_tests/test_cuda_x.py::test_b SKIPPED (needs a CUDA device)             [ 75%]
python_tests/test_cuda_x.py::test_c ERROR                                     [100%]
___________________________ test_a[2] ___________________________
>   def boom(): raise RuntimeError("CUDA error: an illegal memory access was encountered")
E   RuntimeError: CUDA error: an illegal memory access was encountered
=========================== short test summary info ============================
FAILED python_tests/test_cuda_x.py::test_a[2] - RuntimeError: CUDA error: an illegal memory access
ERROR python_tests/test_cuda_x.py::test_c - AssertionError: x
SKIPPED [1] python_tests/test_cuda_x.py:12: needs a CUDA device
SKIPPED [3] python_tests/test_cuda_y.py:40: needs a CUDA device
============ 1 failed, 1 passed, 4 skipped, 1 error in 2.50s ============
"""

# pytest-xdist's per-test lines, and no closing line: the run was killed
KILLED = """\
[gw0] [ 33%] PASSED python_tests/test_cuda_x.py::test_a[1]
[gw1] [ 66%] FAILED python_tests/test_cuda_x.py::test_a[2]
[gw0] [100%] SKIPPED python_tests/test_cuda_x.py::test_b
"""


def test_parse_a_complete_run():
    parsed = results.parse_pytest_log(COMPLETE)
    assert parsed["counts"] == dict(failed=1, error=1, passed=1, skipped=4) and parsed["complete"]
    assert [line.split(" - ")[0] for line in parsed["failed"]] == [
        "FAILED python_tests/test_cuda_x.py::test_a[2]", "ERROR python_tests/test_cuda_x.py::test_c"]
    assert parsed["skips"] == {"needs a CUDA device": 4}
    assert parsed["sticky"].startswith("E   RuntimeError: CUDA error: an illegal memory access")


def test_parse_a_run_killed_before_its_last_line():
    parsed = results.parse_pytest_log(KILLED)
    assert parsed["counts"] == dict(passed=1, failed=1, skipped=1) and not parsed["complete"]
    assert parsed["failed"] == ["FAILED python_tests/test_cuda_x.py::test_a[2]"] and parsed["sticky"] is None


def test_summary_counts_lists_failures_and_tells_skips_from_failures(tmp_path):
    state, out = tmp_path / "state", tmp_path / "out"
    state.mkdir()
    out.mkdir()
    (state / "a.log").write_text(COMPLETE)
    (state / "b.log").write_text(KILLED)
    (state / "run.txt").write_text("mode=first-contact\ndevice=NVIDIA H200, 580.1\nbudget=330\n")
    phases = [("environment", "ok", 5, "-", "setup.log", ""),
              ("kernel tests", "FAILED (exit 1)", 40, 120, "test_kernels.log", f"{state}/a.log {state}/b.log"),
              ("bench_kernels", "CUT SHORT (budget left 30s)", 30, 60, "bench.log", ""),
              ("quant_load", "SKIPPED (no time left)", 0, 60, "bench.log", "")]
    (state / "phases.tsv").write_text("".join("\t".join(map(str, p)) + "\n" for p in phases))
    results.write_json(str(out / "results.json"), {"x_kernels.json": dict(rows=[
        dict(kernel="attention", status="ok"), dict(kernel="remask", status="error: CUDA error")])})
    (out / "bench.log").write_text("noise\n| kernel | ours ms |\n|---|---|\n")
    summary = results.gpu_check_summary(str(state), str(out), 200)
    assert summary.startswith("# gpu_check first-contact on NVIDIA H200, 580.1: 200 s of a 330 s budget")
    assert "| kernel tests | FAILED (exit 1) | 40 | 120 | 2 failed, 1 error, 2 passed, 5 skipped " \
           "(cut off: counted from the per-test lines) | test_kernels.log |" in summary
    assert "RESULT: FAILED: 1 phase(s) failed or timed out; 2 phase(s) skipped or cut short for lack of time" in summary
    assert summary.count("- kernel tests: FAILED python_tests/test_cuda_x.py::test_a[2]") == 2
    assert "- kernel tests: 4 x needs a CUDA device" in summary   # reasons: from complete runs only
    assert "illegal memory access" in summary.split("## CUDA errors")[1]
    assert "  - attention" not in summary and "  - remask: error: CUDA error" in summary
    assert "| kernel | ours ms |" in summary
    assert summary_rows(summary) == {p[0]: p[1] for p in phases}


# ---------------------------------------------------------------- the dry run's output (.ci/run)

@pytest.mark.skipif(not os.environ.get("GPU_CHECK_DRY_RUN_OUT"),
                    reason="set GPU_CHECK_DRY_RUN_OUT to the output of a dry run (.ci/run does)")
def test_dry_run_output(tmp_path):
    out = os.environ["GPU_CHECK_DRY_RUN_OUT"]
    assert set(os.listdir(out)) <= OUT_FILES
    with open(os.path.join(out, "summary.md"), encoding="utf-8") as f:
        summary = f.read()
    rows = summary_rows(summary)
    assert list(rows) == phase_names(), summary
    assert all(s == "ok" or s == "SKIPPED (full mode only)" for s in rows.values()), rows
    assert "RESULT: ok" in summary
    for phase in ("kernel tests", "engine tests", "serving tests"):
        assert re.search(rf"\| {phase} \| ok \| \d+ \| \d+ \| \d+ ", summary), f"{phase}: no tests counted"
    names = results.unpack(os.path.join(out, "results.json"), str(tmp_path))
    kinds = {}
    for path in names:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        kinds[data.get("kind") or os.path.basename(path).split(".")[0]] = data
    assert {"bench_kernels", "bench_generate", "load_test"} <= set(kinds), sorted(kinds)
    assert any(os.path.basename(p) == "bench_quant_matmul.json" for p in names)
    assert kinds["load_test"]["failed"] == 0 and kinds["load_test"]["completed"] > 0
    assert all(r["status"] == "ok" for r in kinds["bench_kernels"]["rows"])
    generate = kinds["bench_generate"]["rows"]
    assert {r.get("kernels") for r in generate} >= {"custom", "torch"}
    assert all(r["status"] == "ok" for r in generate), generate
    assert any(r.get("vs_torch_kernels") for r in generate if r["kernels"] == "custom")
