#!/usr/bin/env bash
# The wheels that benchmarks/gpu_check.sh installs on a GPU machine that reaches no
# package index: what the project needs beyond that machine's image (PyTorch with
# CUDA, NumPy, pytest, matplotlib, OpenCV, ... are there), for its Python 3.12 on
# x86-64, at the versions this project is tested with. Run it here, in the checkout
# that travels to the GPU machine, and carry .whl there (about 18 MB):
#
#   bash benchmarks/gpu_wheels.sh     # -> .whl/ (git-ignored: name it in carry)
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.whl
mkdir -p "$dest"
python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$dest" \
    --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    tensordict==0.14.3 torchrl==0.14.1 hoptorch==0.1.4 pyvers==0.2.3 \
    orjson==3.13.0 importlib_metadata==10.2.0 \
    gymnasium==1.4.0 farama-notifications==0.0.6 \
    mujoco==4.0.1 mujoco-core==4.0.1 glfw==2.11.0 ale-py==0.12.1 \
    hydra-core==1.3.8 omegaconf==2.3.1
# published as a source archive only: built here (pure Python)
python3 -m pip wheel --quiet --no-deps --wheel-dir "$dest" \
    antlr4-python3-runtime==4.9.3
ls "$dest"
du -sh "$dest"
