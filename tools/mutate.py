"""Mutation testing: plant each bug listed in tools/mutants.py, one at a time, in a scratch copy of
the repository, run the tests named for it, and report whether they caught it.

    python tools/mutate.py                          # every mutant (run it before a release)
    python tools/mutate.py --list                   # the list, checked against the sources
    python tools/mutate.py 'cpu_remask_*' loop_rng_step_restarts_per_block   # names or globs
    python tools/mutate.py --no-cuda                # only the CPU and Python mutants
    python tools/mutate.py --deselect python_tests/ops/test_x.py::test_y   # a test failing without mutants

Run it with the project's venv (it needs torch, pybind11, pytest, cmake and ninja); not part of CI.

How: the working tree is copied to a temporary directory (without .git, build outputs, the venv
and the built extension), the extension is built there once (CPU kernels only, ILLADA_CPU_ONLY=ON,
unless a GPU is present: then with CUDA for --cuda-archs), and every named test file runs once on
the unmutated copy (a failing baseline stops the run). Then per mutant: the original text is
replaced, the extension is rebuilt incrementally (ninja) when a C++/CUDA source changed,
`pytest -x -q -p no:cacheprovider <tests>` runs from the copy with PYTHONPATH at the copy (so the
copy's illada_rt and its freshly built _C are imported, not the editable install), and the file
is restored. A test failure is "killed", all passing "survived", no answer within --timeout
"timeout".

Mutants of csrc/cuda/ need a GPU to run their tests. Without one, the objects that include the
mutated file are only compiled (in a second build dir, for --cuda-archs): "compiles: needs a GPU"
or "killed at compile" (a mutant that does not compile tests nothing: replace it with one that
does).

Exit status 1 when a mutant survived, timed out, or could not be applied; otherwise 0. A mutant
with a `gap` (tools/mutants.py) is a known survivor: "survived (known gap)" does not fail the run,
and "killed (gap closed)" asks for the gap note to be removed.
"""
from __future__ import annotations

import argparse
import fnmatch
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mutants import MUTANTS, Mutant  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NATIVE_SUFFIXES = (".cpp", ".cu", ".h", ".cuh")
# not copied: at the top level, and anywhere below it
SKIP_TOP = {".git", "build", ".venv", "venv", "dist", ".pytest_cache"}
SKIP_ANYWHERE = ("__pycache__", "*.egg-info", "_C.*.so", "_C.*.pyd", "_C*.so.tmp")


def is_native(m: Mutant) -> bool:
    return m.file.endswith(NATIVE_SUFFIXES)


def is_cuda(m: Mutant) -> bool:
    return m.file.startswith("csrc/cuda/")


def problems(mutants: Sequence[Mutant], root: Path) -> Dict[str, str]:
    """name -> why that mutant cannot be applied to the tree at root; the others are absent."""
    out, seen = {}, set()
    for m in mutants:
        path = root / m.file
        if m.name in seen:
            out[m.name] = "duplicate name"
        elif not path.is_file():
            out[m.name] = f"{m.file} does not exist"
        elif m.original == m.replacement:
            out[m.name] = "replacement equals the original"
        else:
            count = path.read_text().count(m.original)
            if count != 1:
                out[m.name] = f"original text occurs {count} times in {m.file} (must be once)"
        missing = [t for t in m.tests if not (root / t.split("::")[0]).is_file()]
        if missing and m.name not in out:
            out[m.name] = f"no such test file: {', '.join(missing)}"
        seen.add(m.name)
    return out


def select(patterns: Sequence[str], no_cuda: bool) -> List[Mutant]:
    chosen = [m for m in MUTANTS if not patterns or any(fnmatch.fnmatchcase(m.name, p) for p in patterns)]
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(m.name, p) for m in MUTANTS)]
    if unmatched:
        sys.exit(f"mutate: no mutant matches {', '.join(unmatched)} (see --list)")
    return [m for m in chosen if not (no_cuda and is_cuda(m))]


# ----------------------------------------------------------------------------- the scratch copy

def copy_tree(dst: Path) -> None:
    def ignore(directory: str, names: List[str]) -> List[str]:
        top = Path(directory).resolve() == ROOT
        return [n for n in names if (top and n in SKIP_TOP) or any(fnmatch.fnmatch(n, p) for p in SKIP_ANYWHERE)]
    shutil.copytree(ROOT, dst, ignore=ignore, symlinks=True)


def run(cmd: Sequence[str], *, cwd: Path, env: Optional[dict] = None, timeout: Optional[float] = None
        ) -> Tuple[Optional[int], str]:
    """(exit status or None on timeout, stdout + stderr); the whole process group dies on timeout."""
    proc = subprocess.Popen(list(cmd), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return None, out
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise


def pybind11_cmake_dir() -> str:
    """pybind11's CMake config: $pybind11_DIR, the importable pybind11, or the one the last
    `pip install -e .` used (read from the repository's build dirs)."""
    if os.environ.get("pybind11_DIR"):
        return os.environ["pybind11_DIR"]
    try:
        import pybind11
        return pybind11.get_cmake_dir()
    except ImportError:
        pass
    for cache in sorted((ROOT / "build").glob("*/CMakeCache.txt")):
        found = re.search(r"^pybind11_DIR:[A-Z]+=(.+)$", cache.read_text(errors="replace"), re.M)
        if found and Path(found.group(1), "pybind11Config.cmake").is_file():
            return found.group(1)
    sys.exit("mutate: pybind11 not found: pip install pybind11, or set pybind11_DIR to its CMake dir")


class Build:
    """One CMake + Ninja build dir of the copy's extension (setup.py's configuration)."""

    def __init__(self, copy: Path, name: str, cuda: bool, archs: str, jobs: int):
        self.copy, self.dir, self.cuda, self.jobs = copy, copy / "build" / name, cuda, jobs
        self.archs = archs
        self.configured = False

    def configure(self) -> None:
        ninja = shutil.which("ninja")
        if ninja is None:
            sys.exit("mutate: ninja not found")
        args = ["cmake", "-S", str(self.copy), "-B", str(self.dir), "-G", "Ninja",
                f"-DCMAKE_MAKE_PROGRAM={ninja}", f"-DPython_EXECUTABLE={sys.executable}",
                f"-Dpybind11_DIR={pybind11_cmake_dir()}", "-DCMAKE_BUILD_TYPE=Release",
                f"-DILLADA_CPU_ONLY={'OFF' if self.cuda else 'ON'}", f"-DILLADA_CUDA_ARCHS={self.archs}"]
        if self.cuda and not shutil.which("nvcc") and os.path.exists("/usr/local/cuda/bin/nvcc"):
            args.append("-DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc")
        rc, out = run(args, cwd=self.copy)
        if rc != 0:
            sys.exit(f"mutate: cmake configure of {self.dir} failed:\n{out[-4000:]}")
        self.configured = True

    def ninja(self, targets: Sequence[str]) -> Tuple[bool, str]:
        if not self.configured:
            self.configure()
        rc, out = run(["ninja", "-C", str(self.dir), "-j", str(self.jobs), *targets], cwd=self.copy)
        return rc == 0, out

    def module(self) -> Path:
        built = [p for p in self.dir.iterdir() if p.name.startswith("_C") and p.suffix in (".so", ".pyd")]
        if len(built) != 1:
            sys.exit(f"mutate: expected one built _C module in {self.dir}, found {built}")
        return built[0]

    def objects_including(self, rel: str) -> List[str]:
        """Ninja object targets of the CUDA sources that include `rel` (itself, or through headers)."""
        csrc = self.copy / "csrc"
        headers = {p.name: p for d in ("include", "cuda", "bind") for p in (csrc / d).iterdir()}
        include = re.compile(r'#include\s+"([^"]+)"')

        def closure(path: Path, seen: set) -> set:
            for name in include.findall(path.read_text()):
                if name in headers and name not in seen:
                    seen.add(name)
                    closure(headers[name], seen)
            return seen

        target = Path(rel).name
        sources = sorted((csrc / "cuda").glob("*.cu"))
        hits = [s for s in sources if s.name == target or target in closure(s, set())]
        return [f"CMakeFiles/_C.dir/{s.relative_to(self.copy).as_posix()}.o" for s in hits]


def install(module: Path, copy: Path) -> None:
    """The built module into the copy's package, renamed into place."""
    dst = copy / "illada_rt" / module.name
    shutil.copyfile(module, str(dst) + ".tmp")
    os.replace(str(dst) + ".tmp", dst)


# ----------------------------------------------------------------------------- tests

def copy_env(copy: Path) -> dict:
    """The environment that imports the copy's illada_rt (and _C) first."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(copy)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def run_pytest(copy: Path, tests: Sequence[str], timeout: float, deselect: Sequence[str] = (),
               stop_first: bool = True) -> Tuple[Optional[int], str]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *(["-x"] if stop_first else []),
           *(f"--deselect={d}" for d in deselect), *tests]
    return run(cmd, cwd=copy, env=copy_env(copy), timeout=timeout)


def first_failure(out: str) -> str:
    """The first failing test named in pytest's short summary, or the summary line."""
    for line in out.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line.split(" - ")[0]
    lines = [line for line in out.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def check_imports(copy: Path) -> None:
    code = "import illada_rt, illada_rt._C as c; print(illada_rt.__file__); print(c.__file__)"
    rc, out = run([sys.executable, "-c", code], cwd=copy, env=copy_env(copy))
    paths = out.split()
    if rc != 0 or len(paths) != 2 or not all(Path(p).resolve().is_relative_to(copy.resolve()) for p in paths):
        sys.exit(f"mutate: the copy's illada_rt and _C are not the ones imported:\n{out}")


# ----------------------------------------------------------------------------- one mutant

class Outcome(NamedTuple):
    name: str
    result: str     # killed | survived | timeout | error | killed at compile | compiles: needs a GPU
                    # | survived (known gap) | killed (gap closed)
    seconds: float
    detail: str     # the first failing test, pytest's summary line, or the compiler's first error


def compile_error(out: str) -> str:
    errors = [line for line in out.splitlines() if "error" in line]
    return (errors or [out.strip()[-200:]])[0][:200]


def apply_and_test(m: Mutant, copy: Path, build: Build, cuda_build: Optional[Build], baseline: Path,
                   timeout: float, deselect: Sequence[str]) -> Outcome:
    """Plant m in the copy, build what it needs, run its tests, restore the copy."""
    path = copy / m.file
    original = path.read_text()
    start = time.monotonic()
    compile_only = is_cuda(m) and cuda_build is not None     # a CUDA mutant and no GPU
    rebuilt = is_native(m) and not compile_only               # the tested extension holds the mutant

    def done(result: str, detail: str = "") -> Outcome:
        return Outcome(m.name, result, time.monotonic() - start, detail)

    if original.count(m.original) != 1:
        return done("error", f"original text occurs {original.count(m.original)} times in {m.file}")
    path.write_text(original.replace(m.original, m.replacement))
    try:
        if compile_only:                                  # the objects that include the file
            targets = cuda_build.objects_including(m.file)
            if not targets:
                return done("error", "no CUDA source includes this file")
            ok, out = cuda_build.ninja(targets)
            if not ok:
                return done("killed at compile", compile_error(out))
            return done("compiles: needs a GPU", f"{len(targets)} object(s) compiled")
        if rebuilt:
            ok, out = build.ninja(["_C"])
            if not ok:
                return done("killed at compile", compile_error(out))
            install(build.module(), copy)
        rc, out = run_pytest(copy, m.tests, timeout, deselect)
        if rc is None:
            return done("timeout", f"no answer in {timeout:.0f} s")
        if rc == 0:
            return done("survived (known gap)" if m.gap else "survived", m.gap or first_failure(out))
        if rc in (1, 2, 3):   # tests failed, or could not even be collected / run
            return done("killed (gap closed)" if m.gap else "killed", first_failure(out))
        return done("error", f"pytest exit status {rc}: {first_failure(out)}")
    finally:
        path.write_text(original)     # newer than the mutant's objects: the next build recompiles it
        if rebuilt:
            install(baseline, copy)   # the unmutated extension for the next mutant


# ----------------------------------------------------------------------------- main

def print_table(results: Sequence[Outcome]) -> None:
    width = max([len(r.name) for r in results] + [6])
    rwidth = max([len(r.result) for r in results] + [6])
    print(f"\n{'mutant':<{width}}  {'result':<{rwidth}}  {'s':>6}  detail")
    for r in results:
        print(f"{r.name:<{width}}  {r.result:<{rwidth}}  {r.seconds:6.0f}  {r.detail}")


def list_mutants(mutants: Sequence[Mutant]) -> int:
    bad = problems(MUTANTS, ROOT)
    width = max(len(m.name) for m in mutants)
    for m in mutants:
        kind = "cuda" if is_cuda(m) else "c++" if is_native(m) else "py"
        print(f"{m.name:<{width}}  {kind:<4}  {m.file}  -- {m.why}")
        print(f"{'':<{width}}        tests: {' '.join(m.tests)}")
        if m.gap:
            print(f"{'':<{width}}        known gap: {m.gap}")
        if m.name in bad:
            print(f"{'':<{width}}        CANNOT APPLY: {bad[m.name]}")
    print(f"\n{len(mutants)} mutants, {sum(m.name in bad for m in mutants)} that cannot be applied")
    return 1 if any(m.name in bad for m in mutants) else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="mutant names or globs (default: all)")
    ap.add_argument("--list", action="store_true", help="list the mutants, check they apply, and exit")
    ap.add_argument("--no-cuda", action="store_true", help="skip the csrc/cuda mutants")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds for one mutant's tests (default 1200)")
    ap.add_argument("--cuda-archs", default=os.environ.get("ILLADA_CUDA_ARCHS") or "",
                    help="CUDA architectures: with a GPU (default native), or for the compile-only "
                         "check without one (default 80-real)")
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("MAX_JOBS", os.cpu_count() or 1)))
    ap.add_argument("--deselect", action="append", default=[], metavar="NODEID",
                    help="leave out tests that fail without any mutant (pytest --deselect; repeatable)")
    ap.add_argument("--skip-baseline", action="store_true", help="do not run the tests on the unmutated copy first")
    ap.add_argument("--keep", action="store_true", help="keep the scratch copy (its path is printed)")
    ap.add_argument("--workdir", type=Path, help="where the scratch copy goes (default: a new temp dir)")
    args = ap.parse_args(argv)

    mutants = select(args.names, args.no_cuda)
    if args.list:
        return list_mutants(mutants)
    bad = problems(mutants, ROOT)
    if bad:
        for name, why in bad.items():
            print(f"mutate: {name}: {why}", file=sys.stderr)
        return 1

    import torch
    gpu = torch.cuda.is_available() and shutil.which("nvcc") is not None
    work = Path(tempfile.mkdtemp(prefix="illada-mutate-", dir=args.workdir))
    copy = work / "tree"
    print(f"mutate: {len(mutants)} mutants; scratch copy {copy}; "
          f"{'GPU present: CUDA build' if gpu else 'no GPU: CPU build, CUDA mutants compile only'}", flush=True)
    try:
        copy_tree(copy)
        build = Build(copy, "mutate-cuda" if gpu else "mutate-cpu", gpu, args.cuda_archs or ("native" if gpu else ""),
                      args.jobs)
        cuda_build = None
        if not gpu and any(is_cuda(m) for m in mutants):
            cuda_build = Build(copy, "mutate-cuda-compile", True, args.cuda_archs or "80-real", args.jobs)
        t0 = time.monotonic()
        ok, out = build.ninja(["_C"])
        if not ok:
            sys.exit(f"mutate: the unmutated copy does not build:\n{out[-4000:]}")
        baseline = work / build.module().name
        shutil.copyfile(build.module(), baseline)
        install(baseline, copy)
        check_imports(copy)
        print(f"mutate: built in {time.monotonic() - t0:.0f} s", flush=True)

        runnable = [m for m in mutants if not (is_cuda(m) and cuda_build is not None)]
        files = sorted({t for m in runnable for t in m.tests})
        if files and not args.skip_baseline:
            t0 = time.monotonic()
            rc, out = run_pytest(copy, files, args.timeout * len(files), args.deselect, stop_first=False)
            if rc != 0:
                print(out[-6000:])
                sys.exit(f"mutate: the tests fail on the unmutated copy (status {rc}); fix that first")
            print(f"mutate: baseline passes ({len(files)} test files, {time.monotonic() - t0:.0f} s)", flush=True)

        results = []
        for i, m in enumerate(mutants, 1):
            r = apply_and_test(m, copy, build, cuda_build, baseline, args.timeout, args.deselect)
            results.append(r)
            print(f"[{i}/{len(mutants)}] {r.name}: {r.result} ({r.seconds:.0f} s) {r.detail}", flush=True)
    finally:
        if args.keep:
            print(f"mutate: scratch copy kept at {copy}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    print_table(results)
    failed = [r for r in results if r.result in ("survived", "timeout", "error")]
    count = (lambda *kinds: sum(r.result in kinds for r in results))
    print(f"\n{count('killed', 'killed (gap closed)')} killed, {len(failed)} survived / timed out / not applied, "
          f"{count('survived (known gap)')} known gaps, {count('killed at compile')} killed at compile (replace "
          f"those), {count('compiles: needs a GPU')} compile and need a GPU")
    if count("killed (gap closed)"):
        print("a known gap has closed: clear that mutant's gap in tools/mutants.py")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
