"""The illada-rt command line, run as a subprocess."""
import os
import subprocess
import sys

import pytest

from checkpoints import write_checkpoint, write_text_checkpoint

GEN = ["--gen-length", "8", "--block-length", "8", "--steps", "8"]


def run(*args, stdin=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "illada_rt", *args], input=stdin, capture_output=True, text=True,
                          timeout=300, env=env)


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory, kernel_impl):
    path = str(tmp_path_factory.mktemp("cli_text"))
    write_text_checkpoint(path)
    return path


def test_generate_prints_prompt_and_answer(text_dir):
    r = run("generate", "w1 w2", "--model", text_dir, *GEN)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("w1 w2") and len(r.stdout.split()) > 2
    assert "tokens/s" in r.stderr


def test_generate_matches_python_api(text_dir):
    from illada_rt import Engine
    eng = Engine.from_pretrained(text_dir)
    want = eng.generate_text("w1 w2", gen_length=8, block_length=8, steps=8, seed=0)
    r = run("generate", "w1 w2", "--model", text_dir, *GEN)
    assert r.stdout.rstrip("\n") == "w1 w2" + want


def test_generate_reads_stdin_and_chat(text_dir):
    r = run("generate", "-", "--model", text_dir, "--chat", *GEN, stdin="w3 w4")
    assert r.returncode == 0, r.stderr


def test_chat_answers_each_line(text_dir):
    r = run("chat", "--model", text_dir, *GEN, stdin="w1 w2\n\nw3\n")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.strip().splitlines()) == 2


def test_chat_without_template_is_an_error(tmp_path):
    write_text_checkpoint(str(tmp_path), chat_template=None)
    r = run("chat", "--model", str(tmp_path), *GEN, stdin="w1\n")
    assert r.returncode == 2 and "no chat template" in r.stderr


def test_info(text_dir, kernel_impl):
    r = run("info", "--model", text_dir)
    assert r.returncode == 0, r.stderr
    assert "parameters:" in r.stdout and "build: cuda=" in r.stdout
    assert f"kernels on cpu: {kernel_impl}" in r.stdout              # ILLADA_KERNELS of this test pass
    r = run("info", "--model", text_dir, "--kernels", "attention=torch")
    assert "attention=torch" in r.stdout and "remask=custom" in r.stdout


def test_kernels_option_gives_the_same_answer(text_dir):
    """--kernels picks the op implementations; in float32 on the CPU both give the same tokens."""
    answers = {impl: run("generate", "w1 w2", "--model", text_dir, "--kernels", impl, *GEN) for impl in ("custom", "torch")}
    assert all(r.returncode == 0 for r in answers.values()), answers
    assert answers["custom"].stdout == answers["torch"].stdout


@pytest.mark.parametrize("args,message", [
    (["generate", "w1", "--gen-length", "10", "--block-length", "4"], "not divisible by block_length"),
    (["generate", "w1 <mask>"], "mask token"),
    (["generate", "w1", "--dtype", "float64"], "invalid choice"),
    (["generate", "w1", "--steps", "x"], "invalid int value"),
    (["generate", "w1", "--threshold", "2"], "threshold"),
    (["generate", "w1", "--kernels", "attention=gpu"], "bad part: 'attention=gpu'"),
    (["info"], None),
])
def test_bad_arguments_exit_nonzero_with_one_line(text_dir, args, message):
    if message is None:
        r = run(*args, "--model", os.path.join(text_dir, "missing"))
        message = "no config.json"
    else:
        r = run(*args, "--model", text_dir)
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    write_checkpoint(str(tmp_path), "llada")
    r = run("generate", "hello", "--model", str(tmp_path), *GEN)
    assert r.returncode == 2 and "no tokenizer.json" in r.stderr


def test_bench_runs_on_a_small_synthetic_model(tmp_path):
    r = run("bench", "--repeats", "1", "--prompt-len", "8", "--gen-length", "8", "--block-length", "8",
            "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "speed-up over the reference path" in r.stdout


def test_live_view_redraws_every_step_and_ends_with_the_answer(text_dir):
    r = run("generate", "w1 w2", "--model", text_dir, *GEN, "--live")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("\033[J") >= 7  # one redraw per step after the first
    plain = run("generate", "w1 w2", "--model", text_dir, *GEN, "--no-live").stdout
    assert r.stdout.rstrip("\n").endswith(plain.rstrip("\n"))


def test_infill_keeps_the_unmasked_text(text_dir):
    r = run("infill", "w1 <mask> w3 <mask>", "--model", text_dir)
    assert r.returncode == 0, r.stderr
    words = r.stdout.split()
    assert len(words) == 4 and words[0] == "w1" and words[2] == "w3" and "<mask>" not in words


def test_infill_without_mask_is_an_error(text_dir):
    r = run("infill", "w1 w2", "--model", text_dir)
    assert r.returncode == 2 and "mask" in r.stderr


def test_generate_with_cache(text_dir):
    r = run("generate", "w1 w2", "--model", text_dir, *GEN, "--cache", "dual")
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a GPU is present: --device cuda works")
def test_cuda_without_a_gpu_is_a_one_line_error(text_dir):
    r = run("generate", "w1", "--model", text_dir, *GEN, "--device", "cuda")
    assert r.returncode == 2 and "is unavailable" in r.stderr and "Traceback" not in r.stderr


def test_entry_points_reach_the_same_main(text_dir):
    """pyproject's `illada-rt` script, `python -m illada_rt` and `python -m illada_rt.cli` run one main."""
    import importlib
    import re

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), encoding="utf-8") as f:
        target = re.search(r'^illada-rt = "([\w.]+):(\w+)"', f.read(), re.M)
    assert target is not None
    main = getattr(importlib.import_module(target.group(1)), target.group(2))
    from illada_rt.cli import main as cli_main
    assert main is cli_main
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "illada_rt.cli", "info", "--model", text_dir], capture_output=True,
                       text=True, timeout=300, env=env)
    assert r.returncode == 0 and r.stdout == run("info", "--model", text_dir).stdout
