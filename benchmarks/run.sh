#!/bin/sh
# Regenerate benchmarks/RESULTS.md: the zoo on the host against onnxruntime, TFLite (XNNPACK),
# ExecuTorch (XNNPACK), TVM's Relax VM, PyTorch and TFLite Micro, one process run per network.
#
#   benchmarks/run.sh [--quick] [--peers onnxruntime,litert,...]
#
# Sets up, once, two environments next to .venv (never touched by `make test`):
#   .venv-bench   edgecompile + the peer runtimes (pip extra "bench")
#   .venv-litert  litert-torch, the PyTorch -> TFLite converter (cannot live beside TVM)
# ARM rows (TFLite+XNNPACK under qemu-aarch64) come from benchmarks/arm_xnnpack.py when its JSON exists.
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
CONSTRAINTS=$(mktemp)
trap 'rm -f "$CONSTRAINTS"' EXIT
echo "torch==2.13.0" > "$CONSTRAINTS"     # the CPU wheel; any other spec pulls a CUDA build

make -s toolchains
if [ ! -f .venv-bench/.installed ]; then
  echo "setting up .venv-bench (edgecompile + peer runtimes) ..." >&2
  test -x .venv-bench/bin/python || "$PYTHON" -m venv .venv-bench
  .venv-bench/bin/pip install -q --upgrade pip
  .venv-bench/bin/pip install -q -c "$CONSTRAINTS" -e '.[test,bench]'
  touch .venv-bench/.installed
fi
if [ ! -f .venv-litert/.installed ]; then
  echo "setting up .venv-litert (litert-torch converter) ..." >&2
  test -x .venv-litert/bin/python || "$PYTHON" -m venv .venv-litert
  .venv-litert/bin/pip install -q --upgrade pip
  .venv-litert/bin/pip install -q -c "$CONSTRAINTS" torch==2.13.0 litert-torch
  touch .venv-litert/.installed
fi
EDGECOMPILE_LITERT_PYTHON="$(pwd)/.venv-litert/bin/python" exec .venv-bench/bin/python benchmarks/zoo.py "$@"
