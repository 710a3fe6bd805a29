"""Build illada_rt and its extension illada_rt._C through CMake + Ninja.

Environment:
  ILLADA_CPU_ONLY=1              build without CUDA even where nvcc is found
  ILLADA_CUDA_ARCHS="86;90a"     CUDA architectures (CMake spelling: "86", "86-real", "90-virtual");
                                 unset: SASS sm_80, sm_89, sm_90a + PTX compute_90 (see CMakeLists.txt)
  MAX_JOBS=N                     parallel compile jobs
"""
import os
import shutil
import subprocess
import sys
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))


# Tools a CMake build tree records by path. pip's isolated build environment (with its cmake and
# ninja) is deleted after each install, but build/ outlives it: a cache naming a deleted tool fails
# the next configure ("unable to find a build program corresponding to Ninja") or the build's
# regeneration step.
RECORDED_TOOLS = ("CMAKE_COMMAND", "CMAKE_MAKE_PROGRAM", "CMAKE_CTEST_COMMAND", "CMAKE_CPACK_COMMAND", "CMAKE_ROOT")


def stale_cache_entries(build_dir):
    """[(entry, recorded path)] of build_dir/CMakeCache.txt's RECORDED_TOOLS whose path no longer exists."""
    cache = os.path.join(build_dir, "CMakeCache.txt")
    if not os.path.isfile(cache):
        return []
    stale = []
    with open(cache, encoding="utf-8", errors="replace") as f:
        for line in f:
            name, sep, value = line.rstrip("\n").partition("=")
            name = name.split(":", 1)[0]
            if sep and name in RECORDED_TOOLS and value and not os.path.exists(value):
                stale.append((name, value))
    return stale


def forget_stale_cache(build_dir):
    """Remove build_dir's CMakeCache.txt where it names a tool that is gone (stale_cache_entries): the
    next configure starts afresh with the tools of this build environment, and ninja still rebuilds
    only what changed. Returns the stale entries (empty: the cache is kept)."""
    stale = stale_cache_entries(build_dir)
    if stale:
        name, path = stale[0]
        print(f"illada_rt: {build_dir}/CMakeCache.txt names {name}={path}, which no longer exists "
              "(an earlier build environment); configuring afresh", file=sys.stderr)
        os.remove(os.path.join(build_dir, "CMakeCache.txt"))
    return stale


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        import pybind11

        out_path = os.path.abspath(self.get_ext_fullpath(ext.name))
        build_dir = os.path.join(ROOT, "build", f"cmake-{sysconfig.get_platform()}-{sys.implementation.cache_tag}")
        os.makedirs(build_dir, exist_ok=True)
        forget_stale_cache(build_dir)
        cpu_only = os.environ.get("ILLADA_CPU_ONLY", "0").lower() in ("1", "on", "true", "yes")
        args = [
            "cmake", "-S", ROOT, "-B", build_dir, "-G", "Ninja",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DILLADA_CPU_ONLY={'ON' if cpu_only else 'OFF'}",
            "-DCMAKE_BUILD_TYPE=Release",
            # Always passed, fresh (-U first): an unset variable means CMake's default, not the
            # choice an earlier build left in the cache.
            "-UILLADA_CUDA_ARCHS", f"-DILLADA_CUDA_ARCHS={os.environ.get('ILLADA_CUDA_ARCHS', '')}",
        ]
        if shutil.which("ninja"):  # the build dir outlives pip's isolated build env and its ninja
            args.append(f"-DCMAKE_MAKE_PROGRAM={shutil.which('ninja')}")
        if not shutil.which("nvcc") and os.path.exists("/usr/local/cuda/bin/nvcc"):
            args.append("-DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc")
        subprocess.check_call(args)
        jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 1))
        subprocess.check_call(["cmake", "--build", build_dir, "--target", "_C", "-j", jobs])
        built = [f for f in os.listdir(build_dir) if f.startswith("_C") and f.endswith((".so", ".pyd"))]
        if len(built) != 1:
            raise RuntimeError(f"expected one built _C module in {build_dir}, found {built}")
        os.makedirs(os.path.dirname(out_path), exist_ok=True)
        # A new file renamed into place: processes that loaded the old module keep their copy.
        shutil.copyfile(os.path.join(build_dir, built[0]), out_path + ".tmp")
        os.replace(out_path + ".tmp", out_path)


if __name__ == "__main__":   # pip's build backend runs this file as __main__; tests import its helpers
    setup(ext_modules=[CMakeExtension("illada_rt._C")], cmdclass={"build_ext": CMakeBuild})
