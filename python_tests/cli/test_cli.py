"""The illada-rt command line, run as a subprocess."""
import json
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

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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


# ------------------------------------------------------------------ hostile arguments and checkpoints

def one_line_error(r, *words):
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("illada-rt: error: "), r.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_generate_steps_0_is_an_error_not_the_default(text_dir):
    """Before: `--steps 0` fell back to gen-length steps silently."""
    one_line_error(run("generate", "w1", "--model", text_dir, "--gen-length", "8", "--block-length", "8",
                       "--steps", "0"), "steps must be a positive integer")


@pytest.mark.parametrize("value,words", [("0", ["tensor_parallel", "positive"]),
                                         ("3", ["tensor_parallel=3", "must divide the KV heads"])])
def test_a_bad_tensor_parallel_is_one_line(text_dir, value, words):
    one_line_error(run("generate", "w1", "--model", text_dir, "--gen-length", "8", "--block-length", "8",
                       "--tensor-parallel", value), *words)


@pytest.mark.parametrize("args,words", [
    (["--gen-length", "0"], ["--gen-length", "positive"]),     # before: ZeroDivisionError in the reference
    (["--batch", "0,1"], ["--batch"]),
    (["--gen-length", "12", "--block-length", "8"], ["not divisible by --block-length 8"]),
    (["--gen-length", "16", "--block-length", "8", "--steps", "3"], ["--steps 3"]),
])
def test_bench_bad_lengths_are_one_line(tmp_path, args, words):
    one_line_error(run("bench", "--repeats", "1", "--prompt-len", "8", *args, "--out", str(tmp_path)), *words)


def _text_checkpoint_with(path, config=None, index=None):
    write_text_checkpoint(str(path))
    if config is not None:
        raw = json.loads((path / "config.json").read_text())
        raw.update(config)
        (path / "config.json").write_text(json.dumps(raw))
    if index is not None:
        (path / "model.safetensors.index.json").write_text(json.dumps(index))
    return str(path)


@pytest.mark.parametrize("config,index,words", [
    (None, {"weight_map": ["model.safetensors"]}, ["model.safetensors.index.json", "weight_map"]),
    (None, {"weight_map": {"model.transformer.wte.weight": 5}}, ["model.safetensors.index.json", "file name"]),
    (dict(eos_token_id=[1, 2]), None, ["config.json", "eos_token_id"]),
    (dict(weight_tying="false"), None, ["config.json", "weight_tying"]),
])
def test_broken_checkpoints_are_one_line(tmp_path, config, index, words):
    one_line_error(run("generate", "w1", "--model", _text_checkpoint_with(tmp_path / "m", config, index), *GEN),
                   *words)


def test_ctrl_c_exits_130_with_one_line(monkeypatch, capsys):
    """Before: the status was right but nothing said why the command stopped."""
    from illada_rt import cli
    from illada_rt.cli import generate as generate_cmd

    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(generate_cmd, "generate", interrupted)
    assert cli.main(["generate", "w1"]) == 130
    assert capsys.readouterr().err == "illada-rt: interrupted\n"


def test_ctrl_c_while_importing_exits_130_with_one_line():
    """SIGINT while torch is being imported, as a Ctrl-C right after typing the command."""
    code = ("import builtins, os, signal, sys\n"
            "real = builtins.__import__\n"
            "def imp(name, *a, **k):\n"
            "    if name == 'torch':\n"
            "        builtins.__import__ = real\n"
            "        os.kill(os.getpid(), signal.SIGINT)\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = imp\n"
            "from illada_rt.cli import main\n"
            "sys.exit(main(['info']))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 130 and r.stderr == "illada-rt: interrupted\n", r.stderr[-2000:]
