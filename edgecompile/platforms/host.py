"""This machine: builds become a shared library (`libmodel.so`, run in this process with ctypes by
`HostModel`, hence `edgecompile run`, `bench` and the tests) and a `runner` for raw float files.
Profiles are wall clock; caches are simulated by valgrind's cachegrind; tuning times kernels."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import proc
from ..errors import EdgeCompileError
from ..targets import Target
from ..paths import template_dir
from . import Platform, cache_geometry
from .objects import compile_units, source_units

WEIGHT_FILES = ("weights.c", "weights.S", "weights.bin")


def _copy_sources(build: Path, dest: Path, extra: tuple[str, ...] = ()) -> str:
    """Copy a build's model sources to `dest`; returns the weights source to compile."""
    for f in ("model.c", "model.h", *WEIGHT_FILES, *extra):
        if (build / f).exists():
            shutil.copy(build / f, dest / f)
    return "weights.c" if (dest / "weights.c").exists() else "weights.S"


class Host(Platform):
    kind = "host"
    has_device = False
    runs_here = True
    harness_mode = "timed"
    harness_unit = "seconds"
    tune_runner = "host"

    def build(self, build: Path, target: Target, report: dict[str, Any], weights_src: str,
              progress: Callable[[str], None], defines: tuple[str, ...] = ()) -> dict[str, Any]:
        """libmodel.so (for `edgecompile run`, bench and tests) and the `runner` executable."""
        cflags = [*target.cflags, *defines]
        shutil.copyfile(template_dir("host") / "runner.c", build / "runner.c")
        # position-independent objects serve the library and the program; all of them at once and
        # through the object cache (weights.c as its arrays' bytes: objects.source_units)
        with tempfile.TemporaryDirectory() as tmp:
            units = source_units(build, Path(tmp), ["model.c", weights_src, "runner.c"])
            progress(f"compiling {len(units)} translation units with {target.cc}")
            stats = compile_units(units, target.cc, [*cflags, "-fPIC"], target.name)
            progress(f"objects: {stats.describe()}")
            objects = [str(u.obj) for u in units]
            proc.run_all([([target.cc, *cflags, "-shared", "-o", "libmodel.so", *objects[:-1], *target.ldflags],
                           build, f"{target.cc}: linking libmodel.so"),
                          ([target.cc, *cflags, "-o", "runner", *objects, *target.ldflags], build,
                           f"{target.cc}: linking runner")])
        return {}

    def program(self, build: Path, report: dict[str, Any], emulated: bool) -> Path:
        return build / "libmodel.so"

    def profile(self, target: Target, build: Path, report: dict[str, Any], runs: int = 50) -> dict[str, Any]:
        """Per-call wall-clock time of a host build (compiled again with -DEC_PROFILE)."""
        per = interleaved_profiles(target, [(build, report)], runs)[0]
        return {"unit": "ns (wall clock, this machine)", "unit_key": "ns", "per_call": [int(round(v)) for v in per],
                "runs": runs}

    def cache(self, target: Target, build: Path, report: dict[str, Any]) -> dict[str, Any]:
        """Per-kernel cache simulation of a host build with valgrind cachegrind (x86 code)."""
        proc.require("valgrind", "apt-get install valgrind")
        geometry = cache_geometry(target) or {"l1i": "32768:8:64", "l1d": "32768:8:64", "l2": "1048576:16:64"}
        with tempfile.TemporaryDirectory() as tmp:
            t = Path(tmp)
            weights = _copy_sources(build, t, ("runner.c",))
            # valgrind decodes up to AVX2: -march=native (AVX-512 here) would stop it with SIGILL
            cflags = ["-march=x86-64-v3" if f == "-march=native" else f for f in target.cflags]
            proc.run([target.cc, *cflags, "-g", "-o", "runner", "runner.c", "model.c", weights, *target.ldflags], t,
                     f"{target.cc}: building the runner for cachegrind")
            np.zeros(report["inputs"][0]["shape"], dtype=report["inputs"][0]["dtype"]).tofile(t / "x.bin")
            g = {k: v.replace(":", ",") for k, v in geometry.items()}
            ll = g.get("l2", g.get("l3", "1048576,16,64"))
            proc.run(["valgrind", "--tool=cachegrind", "--cache-sim=yes", f"--I1={g['l1i']}", f"--D1={g['l1d']}",
                      f"--LL={ll}", "--cachegrind-out-file=cg.out", "./runner", "x.bin", "y.bin"], t, "cachegrind")
            text = (t / "cg.out").read_text(errors="replace")
        return {"method": "valgrind cachegrind (x86-64 code, not ARM)", "geometry": geometry,
                "per_kernel": _cachegrind_per_kernel(text, {c["name"] for c in report["calls"]}), "runs": 1}

    # -- tuning: the measuring program times itself (median of batches, one thread)
    def build_harness(self, target: Target, source: Path, exe: Path) -> None:
        proc.run([target.cc, *target.cflags, "-o", str(exe), str(source), *target.ldflags, "-lm"],
                 what=f"{target.cc} on a tuning candidate")

    def run_harness(self, target: Target, exe: Path) -> float:
        """Median seconds per call (wall clock, this machine, one thread)."""
        done = proc.run([str(exe)], what="a tuning candidate", timeout=60,
                        env={**os.environ, "OMP_NUM_THREADS": "1"})
        return float(done.stdout.split()[0]) * 1e-9


def _cachegrind_per_kernel(text: str, names: set[str]) -> dict[str, dict[str, int]]:
    events: list[str] = []
    per: dict[str, list[int]] = {}
    fn = None
    for line in text.splitlines():
        if line.startswith("events:"):
            events = line.split()[1:]
        elif line.startswith("fn="):
            fn = line[3:].strip().split(".")[0]      # f.constprop.0, f.isra.0 are f
        elif fn and line[:1].isdigit():
            nums = [int(v) for v in line.split()[1:]]
            acc = per.setdefault(fn, [0] * len(events))
            for i, v in enumerate(nums):
                acc[i] += v
    out = {}
    for name in names:
        v = dict(zip(events, per.get(name, [0] * len(events))))
        out[name] = {"instructions": v.get("Ir", 0), "l1i_misses": v.get("I1mr", 0), "loads": v.get("Dr", 0),
                     "stores": v.get("Dw", 0), "l1d_misses": v.get("D1mr", 0) + v.get("D1mw", 0),
                     "l2_misses": v.get("DLmr", 0) + v.get("DLmw", 0) + v.get("ILmr", 0)}
    return out


def interleaved_profiles(target: Target, builds: list[tuple[Path, dict[str, Any]]], runs: int) -> list[list[float]]:
    """Mean wall-clock ns per call of each host build [(directory, report)], every build compiled
    again with -DEC_PROFILE and run in turn (one inference of each, `runs` times, after 5 of each):
    the builds see the same machine load."""
    with tempfile.TemporaryDirectory() as tmp:
        libs = []
        for i, (build, report) in enumerate(builds):
            t = Path(tmp) / str(i)
            t.mkdir()
            weights = _copy_sources(build, t)
            (t / "clock.c").write_text(
                "#define _POSIX_C_SOURCE 199309L\n#include <stdint.h>\n#include <time.h>\n"
                "uint64_t ec_profile_clock(void) { struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);"
                " return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec; }\n")
            proc.run([target.cc, *target.cflags, "-DEC_PROFILE", "-fPIC", "-shared", "-o", "prof.so", "model.c",
                      weights, "clock.c", *target.ldflags], t, f"{target.cc}: building the profiling library")
            lib = ctypes.CDLL(str(t / "prof.so"))
            x = np.zeros(report["inputs"][0]["shape"], dtype=report["inputs"][0]["dtype"])
            y = np.zeros(report["outputs"][0]["shape"], dtype=report["outputs"][0]["dtype"])
            n = len(report["calls"])
            args = (x.ctypes.data_as(ctypes.c_void_p), y.ctypes.data_as(ctypes.c_void_p))
            libs.append((lib, args, (ctypes.c_uint64 * n).in_dll(lib, "ec_profile_ticks"), n, x, y))
        for _ in range(5):
            for lib, args, *_ in libs:
                lib.ec_model_run(*args)
        for _, _, ticks, n, *_ in libs:
            for i in range(n):
                ticks[i] = 0
        for _ in range(runs):
            for lib, args, *_ in libs:
                lib.ec_model_run(*args)
        return [[ticks[i] / runs for i in range(n)] for _, _, ticks, n, *_ in libs]


PLATFORM = Host()


class HostModel:
    """A compiled host build loaded with ctypes. Each instance loads its own copy of the library,
    so several builds (or rebuilds of one directory) can be used in one process."""

    @classmethod
    def from_sources(cls, build_dir: str | Path, cc: str = "gcc", flags: tuple[str, ...] = ("-O2",)) -> "HostModel":
        """Any build's model.c and weights (a device build's too: the generated C is portable)
        compiled for this machine, in a private directory."""
        build = Path(build_dir)
        tmp = tempfile.TemporaryDirectory(prefix="ec-hostc-")
        t = Path(tmp.name)
        weights = _copy_sources(build, t, ("report.json",))
        proc.run([cc, *flags, "-fPIC", "-shared", "-o", "libmodel.so", "model.c", weights, "-lm"], t,
                 f"{cc}: compiling {build}/model.c for this machine")
        model = cls(t)
        model._sources = tmp          # removed with the model
        return model

    def __init__(self, build_dir: str | Path) -> None:
        self.dir = Path(build_dir)
        report_path = self.dir / "report.json"
        lib_path = self.dir / "libmodel.so"
        if not report_path.is_file() or not lib_path.is_file():
            raise EdgeCompileError(f"{self.dir}: not a host build (missing report.json or libmodel.so)")
        self.report = json.loads(report_path.read_text())
        self._tmp = tempfile.TemporaryDirectory(prefix="ec-lib-")
        private = Path(self._tmp.name) / "libmodel.so"
        shutil.copyfile(lib_path, private)
        self.lib = ctypes.CDLL(str(private))
        self.lib.ec_model_run_multi.restype = ctypes.c_int
        self.lib.ec_model_run_multi.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        self.inputs = [(tuple(t["shape"]), t["dtype"]) for t in self.report["inputs"]]
        self.outputs = [(tuple(t["shape"]), t["dtype"]) for t in self.report["outputs"]]
        # what each call needs, worked out once: a call's own cost is the network's on a tiny model
        # (MobileNet V1 0.25/32 untuned: ~58 us in C, 73 us through this method before)
        self._in_checks = [(int(np.prod(shape)), np.dtype(dtype), shape) for shape, dtype in self.inputs]
        self._out_specs = [(shape, np.dtype(dtype)) for shape, dtype in self.outputs]
        self._in_ptrs = (ctypes.c_void_p * len(self.inputs))()
        self._out_ptrs = (ctypes.c_void_p * len(self.outputs))()

    def run(self, *inputs: np.ndarray) -> list[np.ndarray]:
        """The outputs (new arrays) for `inputs`: any array of the input's size, converted to its
        type and made contiguous where it is not already."""
        if len(inputs) != len(self._in_checks):
            raise EdgeCompileError(f"model takes {len(self.inputs)} input(s), got {len(inputs)}")
        ins = []
        for i, (x, (size, dtype, shape)) in enumerate(zip(inputs, self._in_checks)):
            if not (type(x) is np.ndarray and x.dtype == dtype and x.flags.c_contiguous):
                x = np.ascontiguousarray(np.asarray(x), dtype=dtype)
            if x.size != size:
                raise EdgeCompileError(f"input has shape {x.shape}, the model expects {shape}")
            ins.append(x)                       # kept alive until the call returns
            self._in_ptrs[i] = x.ctypes.data
        outs = [np.empty(shape, dtype=dtype) for shape, dtype in self._out_specs]
        for i, a in enumerate(outs):
            self._out_ptrs[i] = a.ctypes.data
        rc = self.lib.ec_model_run_multi(self._in_ptrs, self._out_ptrs)
        if rc != 0:
            raise EdgeCompileError(f"ec_model_run failed at kernel call {rc}")
        return outs

    def close(self) -> None:
        self._tmp.cleanup()
        if getattr(self, "_sources", None) is not None:
            self._sources.cleanup()
