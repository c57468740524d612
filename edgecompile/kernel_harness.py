"""Measure one scheduled kernel on its own: a generated C program that calls it in a loop over
buffers of the kernel's shapes, built with the target's compiler and run

* on the host: wall clock, `reps` timed batches, the median per call (one thread);
* under the target's user-mode emulator (qemu-aarch64 for Linux/aarch64 targets) with our
  instruction-counting QEMU plugin: emulator instructions per call, deterministic (not cycles).

This is what the tuner's builder and runners use; the code measured is exactly the code a build
emits (same lowering, same micro-kernels, same compiler flags)."""

from __future__ import annotations

import os
import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .codegen import KernelSource, lower_kernels
from .errors import EdgeCompileError
from .program import C_TYPES, DTYPE_BYTES
from .schedules.ukernels import emit_ukernels
from .targets import Target

SYMBOL = "ec_tuned_kernel"


@dataclass
class BuiltKernel:
    exe: Path
    calls: int            # kernel calls per timed batch
    mark_address: int | None = None


def _buffers(func: Any) -> list[tuple[str, int]]:
    """(C element type, element count) of each PrimFunc parameter buffer, in order."""
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    out = []
    for i, arg in enumerate(ArgInfo.from_prim_func(func)):
        n = 1
        for d in arg.shape:
            n *= int(d)
        dtype = str(arg.dtype)
        if dtype not in C_TYPES:
            raise EdgeCompileError(f"kernel parameter {i}: dtype {dtype} not supported by the harness")
        out.append((dtype, n))
    return out


def harness_source(func: Any, kernel: KernelSource, lanes: int, calls: int, reps: int, emulated: bool,
                   bare_metal: bool = False, lane_fma: bool = False) -> str:
    """The measuring program: static buffers of the kernel's shapes filled with fixed pseudo-
    random values; emulated: one warm-up call, then `calls` calls between two marker calls."""
    bufs = _buffers(func)
    lines = ["#define _POSIX_C_SOURCE 199309L", "#include <math.h>", "#include <stdbool.h>", "#include <stddef.h>",
             "#include <stdint.h>", "#include <stdlib.h>", "#include <string.h>", ""]
    if not emulated:
        lines[-1:-1] = ["#include <stdio.h>", "#include <time.h>"]
    micro = emit_ukernels(kernel.c_code, lanes, lane_fma)
    if micro:
        lines.append(micro)
    lines.append(kernel.c_code)
    lines.append("")
    for i, (dtype, n) in enumerate(bufs):
        lines.append(f"static {C_TYPES[dtype]} b{i}[{n}] __attribute__((aligned(16)));")
    for j, nbytes in enumerate(kernel.scratch_bytes):
        lines.append(f"static uint8_t s{j}[{max(nbytes, 1)}] __attribute__((aligned(16)));")
    args = [f"b{i}" for i in range(len(bufs))] + [f"s{j}" for j in range(len(kernel.scratch_bytes))]
    call = f"{kernel.symbol}({', '.join(args)})"
    lines += [
        "__attribute__((noinline)) void ec_hal_mark(void) { __asm__ volatile(\"\" ::: \"memory\"); }",
    ]
    if not emulated:
        lines += [
            "static double now_ns(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);"
            " return t.tv_sec * 1e9 + t.tv_nsec; }",
            "static int cmp(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b;"
            " return (x > y) - (x < y); }"]
    lines += [
        "int main(void) {",
        "  uint32_t r = 12345u;",
    ]
    for i, (dtype, n) in enumerate(bufs):
        if dtype.startswith("float"):
            val = "(float)((int)(r >> 9) % 2001 - 1000) / 1000.0f"
        else:
            val = f"({C_TYPES[dtype]})((int)(r >> 9) % 7 - 3)"
        lines.append(f"  for (long i = 0; i < {n}; ++i) {{ r = r * 1664525u + 1013904223u; b{i}[i] = {val}; }}")
    if emulated:
        lines += [f"  {call};", "  ec_hal_mark();", f"  for (int i = 0; i < {calls}; ++i) {call};",
                  "  ec_hal_mark();", "  return 0;", "}"]
        if bare_metal:    # Cortex-M code run by QEMU's user mode: a Linux entry point and exit
            lines += ["__attribute__((naked, noreturn)) void _start(void) {",
                      "  __asm__ volatile(\"bl main\\n movs r7, #1\\n svc #0\\n\");", "}"]
    else:   # calls per batch: doubled until a batch takes 1 ms; then `reps` batches, the median
        lines += [f"  double t[{reps}];", "  long calls = 1;",
                  "  for (;;) {", "    double t0 = now_ns();",
                  f"    for (long i = 0; i < calls; ++i) {call};",
                  "    if (now_ns() - t0 > 1e6 || calls >= (1L << 20)) break;", "    calls *= 2;", "  }",
                  f"  for (int k = 0; k < {reps}; ++k) {{",
                  "    double t0 = now_ns();",
                  f"    for (long i = 0; i < calls; ++i) {call};",
                  "    t[k] = (now_ns() - t0) / calls;",
                  "  }",
                  f"  qsort(t, {reps}, sizeof t[0], cmp);",
                  f"  printf(\"%.1f\\n\", t[{reps} / 2]);",
                  "  return 0;", "}"]
    return "\n".join(lines) + "\n"


def build(func: Any, target: Target, workdir: Path, emulated: bool, reps: int = 9) -> BuiltKernel:
    """Lower `func` exactly as a build would and compile it into a measuring program."""
    from .schedules import family_module

    kernel = lower_kernels({SYMBOL: func}, target.tvm)[SYMBOL]
    lanes = family_module(target.family).LANES
    calls = 1      # emulated: one call counts exactly; host: the program calibrates itself
    workdir.mkdir(parents=True, exist_ok=True)
    src = workdir / "harness.c"
    bare_metal = target.firmware == "cortex_m"
    if bare_metal and not emulated:
        raise EdgeCompileError(f"{target.name} kernels can only be measured under the emulator (--runner emu)")
    lane_fma = getattr(family_module(target.family), "LANE_FMA", False)
    src.write_text(harness_source(func, kernel, lanes, calls, reps, emulated, bare_metal, lane_fma))
    exe = workdir / "harness"
    ldflags = list(target.ldflags)
    if emulated and not bare_metal and "-static" not in ldflags:
        ldflags.append("-static")
    proc = subprocess.run([target.cc, *target.cflags, "-o", str(exe), str(src), *ldflags, "-lm"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise EdgeCompileError(f"{target.cc} failed on a tuning candidate: {proc.stderr.strip()[-400:]}")
    mark = None
    if emulated:
        from .firmware import elf_symbol

        mark = elf_symbol(exe, "ec_hal_mark")
    return BuiltKernel(exe, calls, mark)


def run_host(built: BuiltKernel, timeout: float = 60) -> float:
    """Median seconds per call (wall clock, this machine, one thread)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(built.exe)], capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise EdgeCompileError(f"tuning candidate crashed (exit {proc.returncode}): {proc.stderr.strip()[-200:]}")
    return float(proc.stdout.split()[0]) * 1e-9


def user_mode_emulator(target: Target) -> tuple[str, str]:
    """(QEMU user-mode program, -cpu) that runs this target's kernel code. Cortex-M4/M7 code
    (Thumb-2 + FPv4/FPv5) runs unchanged on QEMU's user-mode `max` CPU, so its instruction counts
    are the M-profile binary's (QEMU cannot run M-profile CPUs in user mode). Helium (MVE) exists
    only on M-profile: not measurable this way."""
    if target.firmware == "linux" and target.emulator.get("program"):
        return target.emulator["program"], target.emulator.get("cpu", "max")
    if target.firmware == "cortex_m" and target.family == "cortex_m":
        return "qemu-arm", "max"
    raise EdgeCompileError(f"no user-mode emulator runs {target.name}'s kernels ({target.cpu}, family "
                           f"{target.family}): Helium needs an M-profile CPU, which QEMU's user mode lacks; "
                           "tune on a Linux target or through rpc://")


def run_emulated(built: BuiltKernel, target: Target, timeout: float = 300) -> int:
    """Emulator instructions per call under the target's user-mode QEMU (deterministic)."""
    import tempfile

    from .device import build_plugin

    program, cpu = user_mode_emulator(target)
    plugin = build_plugin("ec_insn")
    mark = built.mark_address
    if mark is None:
        from .firmware import elf_symbol

        mark = elf_symbol(built.exe, "ec_hal_mark") & ~1     # Thumb symbols carry bit 0
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "counts.txt"
        cmd = [program, "-cpu", cpu, "-plugin",
               f"{plugin},mark={mark:#x},out={out}", str(built.exe)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise EdgeCompileError(f"tuning candidate failed under {program} (exit {proc.returncode}): "
                                   f"{proc.stderr.strip()[-200:]}")
        counts = [int(v) for v in out.read_text().split()]
    if len(counts) < 2:
        raise EdgeCompileError("the instruction-counting plugin recorded no marker calls")
    return counts[1] // built.calls


def median(values: list[float]) -> float:
    return statistics.median(values)
