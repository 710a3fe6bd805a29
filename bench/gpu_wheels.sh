#!/usr/bin/env bash
# Downloads into .whl/ (git-ignored) the wheels that the GPU machine lacks, for its Python 3.12 on
# manylinux x86_64: that machine has no internet, so they travel with the working tree (name ".whl" in
# the device call's carry) and bench/gpu_check.sh installs those not installed there.
#
#   bash bench/gpu_wheels.sh            # once, on a machine with internet, from anywhere in the repository
#   bash bench/gpu_wheels.sh NAME==VER  # other packages as well (their missing requirements too, by name)
#
# What the GPU machine lacks is read off /work/.library/device/KINDS.md's package list: it has torch,
# pytest, pytest-xdist, pytest-timeout, numpy, safetensors, tokenizers, jinja2, pybind11, cmake, ninja,
# nvidia-ml-py, httpx and the servers' requirements (anyio, h11, click, typing-extensions), but not
# starlette and uvicorn (the HTTP server: the load test). The pins are the versions the suite passes
# with here, within pyproject's starlette>=0.37 and uvicorn>=0.29.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(starlette==1.10.0 uvicorn==0.54.0 "$@")

mkdir -p .whl
for spec in "${WHEELS[@]}"; do
  name="${spec%%[=<>!~]*}"
  # one version of each package: two make the install stop
  find .whl -maxdepth 1 -iname "$(echo "$name" | tr '-' '_')-*.whl" -delete
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl "$spec"
done

echo "in .whl/ ($(du -sh .whl | cut -f1); the working tree and its carried paths travel within 64 MiB):"
for whl in .whl/*.whl; do
  echo "  $(basename "$whl")"
  # what each one needs (extras aside): these must be on the GPU machine or carried too
  python3 - "$whl" <<'EOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    for line in z.read(meta).decode().splitlines():
        if line.startswith("Requires-Dist:") and "extra ==" not in line:
            print("    needs", line.split(":", 1)[1].strip())
EOF
done
echo "device call: carry [\".whl\"], command: bash bench/gpu_check.sh --first-contact \$OUT"
