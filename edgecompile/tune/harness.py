"""Measure one scheduled kernel on its own: a generated C program that calls it over buffers of
the kernel's shapes, compiled and run by the target's platform

* on the host: wall clock, timed batches, the median per call (one thread);
* under an emulator: instructions between two marker calls, counted by our QEMU plugin
  (deterministic emulator counts, not cycles).

This is what the tuner's builder and runners use; the code measured is exactly the code a build
emits (same lowering, same micro-kernels, same compiler flags)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from ..codegen.lower import KernelSource, family_c, lower_kernels
from ..errors import EdgeCompileError
from ..ir.program import C_TYPES
from ..platforms import platform_for
from ..schedules import emit_ukernels, family
from ..targets import Target

SYMBOL = "ec_tuned_kernel"


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


def harness_source(func: Any, kernel: KernelSource, family: str, mode: str, entry: str = "", reps: int = 9) -> str:
    """The measuring program: static buffers of the kernel's shapes filled with fixed pseudo-
    random values. `mode` "marked": one warm-up call, then one call between two marker calls
    (counted by an emulator plugin); "ticked": the same, the marker function being the platform's
    (a bare-metal entry that reads a timer at each call); "timed": batches timed by the program
    itself, the median printed in ns. `entry`: extra C (a bare-metal entry point)."""
    emulated, calls = mode in ("marked", "ticked"), 1
    bufs = _buffers(func)
    lines = ["#define _POSIX_C_SOURCE 199309L", "#include <math.h>", "#include <stdbool.h>", "#include <stddef.h>",
             "#include <stdint.h>", "#include <stdlib.h>", "#include <string.h>", ""]
    if not emulated:
        lines[-1:-1] = ["#include <stdio.h>", "#include <time.h>"]
    micro = emit_ukernels(kernel.c_code, family)
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
    lines.append("void ec_hal_mark(void);" if mode == "ticked" else
                 "__attribute__((noinline)) void ec_hal_mark(void) { __asm__ volatile(\"\" ::: \"memory\"); }")
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
        if entry:
            lines.append(entry)
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


def build(func: Any, target: Target, workdir: Path) -> Path:
    """Lower `func` exactly as a build would and compile it into a measuring program."""
    platform = platform_for(target)
    kernel = lower_kernels({SYMBOL: func}, target.tvm)[SYMBOL]
    kernel = replace(kernel, c_code=family_c(kernel.c_code, family(target.family).RULES))
    workdir.mkdir(parents=True, exist_ok=True)
    src = workdir / "harness.c"
    src.write_text(harness_source(func, kernel, target.family, platform.harness_mode_for(target),
                                  platform.harness_entry(target)))
    exe = workdir / "harness"
    platform.build_harness(target, src, exe)
    return exe
