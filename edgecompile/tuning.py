"""`edgecompile tune`: auto-tuning every distinct kernel of a model with TVM MetaSchedule.

Search space. Each kernel's design space is the set of configurations its target family's rule
accepts (tile sizes of the micro-kernel, loop order, rows per tile of fused depthwise+pointwise
kernels; see `schedules.space`) plus the portable untiled schedule. Each configuration is one
MetaSchedule design space (a `ScheduleFn` returning a list of schedules), because the tensorize
intrinsic depends on the tile: sampling instructions could not carry it. `EnumerateSpaces`
measures every configuration once (skipping structurally identical ones and, with --resume,
those already in the database).

Measuring. The builder works in this process (no worker pool re-importing TVM per batch):
  * host / emu runners: the candidate is lowered exactly as a build lowers it and compiled into
    a measuring program (`kernel_harness`); `host` times it (median, 1 thread), `emu` counts its
    instructions under the target's user-mode QEMU with our plugin (deterministic; recorded as
    instructions / clock as MetaSchedule wants seconds: emulator counts, not cycles);
  * rpc://HOST:PORT/KEY: the candidate is built as a TVM runtime module (C target, compiled with
    the target's compiler, our micro-kernels linked in) and timed by MetaSchedule's RPCRunner on
    the devices registered with a TVM RPC tracker under KEY (a farm of Pis tunes in parallel).

Records. One MetaSchedule JSON database per target, `<db>/<target>/`, keyed by the kernel's
workload (structural hash of its PrimFunc). Each record's trace carries the configuration as an
annotation of the root block (`ec.config`), so `build` re-applies our rule with it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import EdgeCompileError
from .targets import Target

CONFIG_KEY = "ec.config"


def _ms() -> Any:
    # MetaSchedule's TuneContext imports tvm.s_tir.tensor_intrin (~80 s here: CUDA/Hexagon/x86
    # intrinsics) that our schedules never use; an empty module stands in for it.
    sys.modules.setdefault("tvm.s_tir.tensor_intrin", types.ModuleType("tvm.s_tir.tensor_intrin"))
    import logging

    # MetaSchedule's console log (task tables on stdout) sets its level from this logger's; the
    # full log still goes to the work directory. Our own progress line replaces it.
    ms_log = logging.getLogger("tvm.s_tir.meta_schedule")
    ms_log.setLevel(logging.DEBUG if os.environ.get("EDGECOMPILE_MS_LOG") else logging.WARNING)
    from tvm.s_tir import meta_schedule as ms

    return ms


def default_db() -> Path:
    env = os.environ.get("EDGECOMPILE_TUNING_DB")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgecompile" / "tuning"


def workload(func: Any) -> Any:
    """The IRModule MetaSchedule keys a kernel's records by."""
    _ms()
    from tvm.s_tir.meta_schedule.tune_context import _normalize_mod

    return _normalize_mod(func)


def _register_intrinsics(text: str) -> None:
    """Register every micro-kernel intrinsic `text` (a trace or a database file) names: the JSON
    database replays every stored trace when it opens."""
    from .schedules import ukernels

    for name in sorted(set(re.findall(r"ec_(?:gemm|dw)_[a-z0-9_]+", text))):
        m = re.fullmatch(r"ec_gemm_(f32|s8|s16)_(\d+)x(\d+)_k(\d+)_s(\d+)", name)
        if m:
            ukernels.gemm_intrin(int(m[2]), int(m[3]), int(m[4]), int(m[5]), ukernels.TYPES[m[1]])
            continue
        m = re.fullmatch(r"ec_dw_(f32|s8|s16)_(\d+)x(\d+)_k(\d+)x(\d+)s(\d+)", name)
        if m:
            ukernels.dw_intrin(*(int(m[i]) for i in range(2, 7)), ukernels.TYPES[m[1]])


def db_key(target: Target) -> str:
    """The database directory of a target: its name, plus the schedule family's variant when the
    family adapts to the machine (host: avx2 / avx512), since the tiles differ."""
    from .schedules import family_module

    variant = getattr(family_module(target.family), "VARIANT", "")
    return f"{target.name}-{variant}" if variant else target.name


def open_database(db: Path, target: Target) -> Any:
    ms = _ms()
    d = db / db_key(target)
    d.mkdir(parents=True, exist_ok=True)
    records = d / "database_tuning_record.json"
    for attempt in range(3):     # a tune running beside us may append records between the reads
        if records.exists():
            _register_intrinsics(records.read_text())
        try:
            return ms.database.JSONDatabase(path_workload=str(d / "database_workload.json"),
                                            path_tuning_record=str(records))
        except Exception as err:  # noqa: BLE001 - a corrupt file: say which
            if attempt == 2:
                raise EdgeCompileError(f"cannot read the tuning database {d}: "
                                       f"{str(err).strip().splitlines()[-1]}") from None
    raise AssertionError("unreachable")


def config_of(trace: Any) -> dict | None:
    """The configuration a record's trace annotated on the root block (None: not one of ours)."""
    for inst in trace.insts:
        if inst.kind.name == "Annotate" and tuple(inst.attrs) == (CONFIG_KEY,):
            return json.loads(str(inst.inputs[1]))
    return None


@dataclass
class TuningRecords:
    """What `build` consults: the best measured configuration of each kernel, if any."""

    db: Path
    target: Target
    hits: dict[str, dict] = field(default_factory=dict)
    _database: Any = None

    def config_for(self, func: Any, name: str = "") -> dict | None:
        if self._database is None:
            if not (self.db / db_key(self.target) / "database_tuning_record.json").exists():
                return None
            self._database = open_database(self.db, self.target)
        mod = workload(func)
        if not self._database.has_workload(mod):
            return None
        top = self._database.get_top_k(self._database.commit_workload(mod), 1)
        if not top or not top[0].run_secs or float(top[0].run_secs[0]) >= 1e9:
            return None
        cfg = config_of(top[0].trace)
        if cfg is not None and name:
            self.hits[name] = cfg
        return cfg


# ----------------------------------------------------------------------------- MetaSchedule pieces


def _classes() -> dict[str, Any]:
    """MetaSchedule subclasses (defined lazily: importing MetaSchedule costs seconds)."""
    ms = _ms()
    import tvm_ffi
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback
    from tvm.s_tir.meta_schedule.runner import PyRunner, RunnerFuture, RunnerResult
    from tvm.s_tir.meta_schedule.search_strategy import MeasureCandidate, PySearchStrategy

    @derived_object
    class EnumerateSpaces(PySearchStrategy):
        """Each design space (one configuration) once, in order; structurally identical ones
        once; with `resume`, none already recorded for this workload."""

        def __init__(self, resume: bool = False, stop: dict | None = None) -> None:
            self.resume = resume
            self.stop = stop if stop is not None else {}

        def _initialize_with_tune_context(self, context: Any) -> None:
            self.mod = context.mod

        def pre_tuning(self, max_trials: int, num_trials_per_iter: int, design_spaces: list, database: Any = None,
                       cost_model: Any = None) -> None:
            done: set[str] = set()
            if self.resume and database is not None and database.has_workload(self.mod):
                wl = database.commit_workload(self.mod)
                done = {str(r.trace) for r in database.get_top_k(wl, 1 << 30)}
            seen, todo = set(), []
            for sch in design_spaces:
                h = tvm_ffi.structural_hash(sch.mod)
                if h in seen or str(sch.trace) in done:
                    continue
                seen.add(h)
                todo.append(sch)
            self.todo, self.per_iter, self.left = todo, num_trials_per_iter, max_trials
            self.skipped = len(design_spaces) - len(todo)

        def post_tuning(self) -> None:
            self.todo = []

        def generate_measure_candidates(self) -> list | None:
            if self.stop.get("interrupted"):
                return None           # Ctrl-C: end this kernel after the batch in flight
            n = min(self.per_iter, self.left, len(self.todo))
            if n <= 0:
                return None
            batch, self.todo = self.todo[:n], self.todo[n:]
            return [MeasureCandidate(s, ArgInfo.from_entry_func(s.mod, remove_preproc=True)) for s in batch]

        def notify_runner_results(self, measure_candidates: list, results: list) -> None:
            self.left -= len(results)

        def clone(self) -> Any:
            return EnumerateSpaces(self.resume, self.stop)

    @derived_object
    class HarnessBuilder(PyBuilder):
        """Lower each candidate like a build does and compile a measuring program, in this
        process. Each artifact gets its own directory (MetaSchedule deletes it after use)."""

        def __init__(self, target: Target, root: str, emulated: bool) -> None:
            super().__init__()
            self.target, self.root, self.emulated = target, root, emulated

        def build(self, build_inputs: list) -> list:
            from .kernel_harness import build as build_harness

            out = []
            for bi in build_inputs:
                try:
                    d = Path(tempfile.mkdtemp(prefix="cand-", dir=self.root))
                    built = build_harness(bi.mod["main"], self.target, d, self.emulated)
                    out.append(BuilderResult(str(built.exe), None))
                except Exception as err:  # noqa: BLE001 - a failed candidate is a result, not a crash
                    out.append(BuilderResult(None, f"{type(err).__name__}: {str(err)[-600:]}"))
            return out

    @derived_object
    class HarnessRunner(PyRunner):
        """host: wall clock (median); emu: emulator instruction counts / clock_hz."""

        def __init__(self, target: Target, emulated: bool) -> None:
            super().__init__()
            self.target, self.emulated = target, emulated

        def run(self, runner_inputs: list) -> list:
            from .kernel_harness import BuiltKernel, run_emulated, run_host

            futures = []
            for ri in runner_inputs:
                try:
                    built = BuiltKernel(Path(ri.artifact_path), 1)
                    if self.emulated:
                        secs = run_emulated(built, self.target) / max(self.target.clock_hz, 1)
                    else:
                        secs = run_host(built)
                    res = RunnerResult([secs], None)
                except Exception as err:  # noqa: BLE001
                    res = RunnerResult(None, f"{type(err).__name__}: {str(err)[-600:]}")
                futures.append(RunnerFuture(f_done=lambda: True, f_result=lambda r=res: r))
            return futures

    @derived_object
    class RuntimeModuleBuilder(PyBuilder):
        """For the RPC runner: a TVM runtime module of the candidate (C target) compiled with the
        target's compiler, our micro-kernels linked in as an object file."""

        def __init__(self, target: Target, root: str) -> None:
            super().__init__()
            self.target, self.root = target, root

        def build(self, build_inputs: list) -> list:
            import subprocess

            import tvm

            from .codegen import lower_kernels
            from .schedules import family_module
            from .schedules.ukernels import emit_ukernels

            out = []
            for bi in build_inputs:
                try:
                    d = Path(tempfile.mkdtemp(prefix="lib-", dir=self.root))
                    rt = tvm.compile(bi.mod, target=tvm.target.Target({"kind": "c"}))
                    code = lower_kernels({"k": bi.mod["main"]}, {"kind": "c"})["k"].c_code
                    fam = family_module(self.target.family)
                    uk = emit_ukernels(code, fam.LANES, getattr(fam, "LANE_FMA", False))
                    (d / "uk.c").write_text("#include <stdint.h>\n#include <string.h>\n"
                                            + uk.replace("static inline ", ""))
                    subprocess.run([self.target.cc, *self.target.cflags, "-fPIC", "-c", str(d / "uk.c"), "-o",
                                    str(d / "uk.o")], check=True, capture_output=True)
                    path = d / "lib.so"
                    rt.export_library(str(path), addons=[str(d / "uk.o")], cc=self.target.cc,
                                      options=[*self.target.cflags, "-fPIC"])
                    out.append(BuilderResult(str(path), None))
                except Exception as err:  # noqa: BLE001
                    out.append(BuilderResult(None, f"{type(err).__name__}: {str(err)[-600:]}"))
            return out

    @derived_object
    class Progress(PyMeasureCallback):
        def __init__(self, report: Callable[[list], None]) -> None:
            super().__init__()
            self.report = report

        def apply(self, task_scheduler: Any, task_id: int, measure_candidates: list, builder_results: list,
                  runner_results: list) -> None:
            errors = [b.error_msg or r.error_msg for b, r in zip(builder_results, runner_results)]
            self.report([None if r.error_msg or not r.run_secs else float(r.run_secs[0]) for r in runner_results],
                        [e for e in errors if e])

    return {"EnumerateSpaces": EnumerateSpaces, "HarnessBuilder": HarnessBuilder, "HarnessRunner": HarnessRunner,
            "RuntimeModuleBuilder": RuntimeModuleBuilder, "Progress": Progress}


def _space_fn(func: Any, family: str, configs: list[dict]) -> Callable[[Any], list]:
    """One schedule per configuration (our rule applied with it), each annotated with its
    configuration so that `build` can apply the same rule again."""
    from tvm import s_tir

    from . import schedules

    info = schedules.analyze(func)

    def fn(sch: Any) -> list:
        out = []
        for cfg in configs:
            s = s_tir.Schedule(sch.mod)
            if not schedules.apply_config(s, info, family, cfg):
                continue                      # the rule rejects this configuration
            s.annotate(s.get_sblock("root"), CONFIG_KEY, json.dumps(cfg, sort_keys=True))
            out.append(s)
        return out

    return fn


def _kernel_summary(database: Any, func: Any, name: str, info: Any, calls: int, configs: list[dict],
                    scale: float) -> dict[str, Any]:
    """From the database (so a resumed run reports what earlier runs measured too): the best
    configuration and cost, and the cost of the rule's own choice (configs[0])."""
    best_cfg = best = default = None
    mod = workload(func)
    if database.has_workload(mod):
        for r in database.get_top_k(database.commit_workload(mod), 1 << 20):
            if not r.run_secs or float(r.run_secs[0]) >= 1e9:
                continue
            cost = sorted(float(x) for x in r.run_secs)[len(r.run_secs) // 2] * scale
            cfg = config_of(r.trace)
            if best is None or cost < best:
                best, best_cfg = cost, cfg
            if cfg == configs[0] and (default is None or cost < default):
                default = cost
    return {"kernel": name, "kind": info.kind, "macs": info.macs, "calls": calls, "configurations": len(configs),
            "rule_config": configs[0], "best_config": best_cfg, "default_cost": default, "best_cost": best}


@dataclass
class Runner:
    kind: str                   # host | emu | rpc
    tracker: tuple[str, int, str] | None = None

    @property
    def unit(self) -> str:
        return {"host": "us (wall clock, this machine)", "emu": "emulator instructions (not cycles)",
                "rpc": "us (wall clock, RPC device)"}[self.kind]


def parse_runner(spec: str, target: Target) -> Runner:
    if spec == "host":
        if target.family != "host":
            raise EdgeCompileError(f"--runner host times kernels on this machine; target {target.name} is "
                                   f"{target.cpu}: use --runner emu or rpc://HOST:PORT/KEY")
        return Runner("host")
    if spec == "emu":
        from .kernel_harness import user_mode_emulator

        if target.family == "host":
            raise EdgeCompileError("--runner emu needs a user-mode emulator for an ARM target; "
                                   "--target host uses --runner host")
        try:
            user_mode_emulator(target)
        except EdgeCompileError as err:
            raise EdgeCompileError(f"--runner emu: {err}") from None
        return Runner("emu")
    m = re.fullmatch(r"rpc://([^:/]+):(\d+)/([\w.-]+)", spec)
    if m:
        return Runner("rpc", (m[1], int(m[2]), m[3]))
    raise EdgeCompileError(f"--runner must be host, emu or rpc://HOST:PORT/KEY, got {spec!r}")


def tune(kernels: list[tuple[str, Any, int]], target: Target, runner: Runner, db: Path, trials: int | None = None,
         resume: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Tune `kernels` [(name, unscheduled PrimFunc, calls in the model)] and record the results.
    Returns a summary: per kernel, configurations measured, best and rule-default costs."""
    ms = _ms()
    import tvm

    from . import schedules

    cls = _classes()
    database = open_database(db, target)
    summary: dict[str, Any] = {"target": target.name, "runner": runner.kind, "unit": runner.unit,
                               "db": str(db / db_key(target)), "kernels": []}
    spaces = []
    for name, func, calls in kernels:
        configs, info = schedules.space(func, target.family)
        if len(configs) > 1:
            if trials:      # the rule's first `trials` configurations, and the untiled fallback
                configs = configs[:-1][:trials] + configs[-1:]
            spaces.append((name, func, calls, configs, info))
    total = sum(len(s[3]) for s in spaces)
    log(f"tuning {len(spaces)} kernels ({total} configurations) for {target.name} with the {runner.kind} runner; "
        f"costs are {runner.unit}")
    done, t_start = 0, time.monotonic()
    scale = 1e6 if runner.kind != "emu" else float(max(target.clock_hz, 1))
    workdir = Path(tempfile.mkdtemp(prefix="ec-tune-"))
    stop: dict[str, bool] = {}

    def on_sigint(signum: int, frame: Any) -> None:
        if stop.get("interrupted"):            # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        stop["interrupted"] = True
        log("interrupted: finishing the candidates in flight (Ctrl-C again to stop at once)")

    import signal

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        for k, (name, func, calls, configs, info) in enumerate(spaces):
            if stop.get("interrupted"):
                raise KeyboardInterrupt
            best: list[float] = []

            def report(costs: list, errors: list, name: str = name) -> None:
                nonlocal done
                done += len(costs)
                for e in errors[:1]:       # a failed candidate is skipped, but say why
                    log(f"  candidate failed: {e.strip().splitlines()[-1][:300]}")
                ok = [c for c in costs if c is not None]
                if ok:
                    best.append(min(ok + best))
                elapsed = time.monotonic() - t_start
                eta = elapsed / max(done, 1) * (total - done)
                b = "-" if not best else f"{best[-1] * scale:,.0f}" if runner.kind == "emu" else f"{best[-1] * scale:.2f}"
                log(f"  [{done}/{total}] kernel {k + 1}/{len(spaces)} {name[:48]}: best {b} "
                    f"({runner.unit.split(' (')[0]}), ETA {eta:.0f} s")

            if runner.kind == "rpc":
                builder = cls["RuntimeModuleBuilder"](target, str(workdir))
                host, port, key = runner.tracker
                run = ms.runner.RPCRunner(
                    rpc_config=ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=key,
                                                   session_timeout_sec=120),
                    evaluator_config=ms.runner.EvaluatorConfig(number=20, repeat=5, min_repeat_ms=0,
                                                               enable_cpu_cache_flush=False),
                    max_workers=1)
            else:
                builder = cls["HarnessBuilder"](target, str(workdir), runner.kind == "emu")
                run = cls["HarnessRunner"](target, runner.kind == "emu")
            ms.tune_tir(
                func, tvm.target.Target({"kind": "c"}), str(workdir / f"logs{k}"), max_trials_global=len(configs),
                num_trials_per_iter=4, builder=builder, runner=run, database=database,
                cost_model=ms.cost_model.RandomModel(),
                measure_callbacks=[ms.measure_callback.AddToDatabase(), ms.measure_callback.RemoveBuildArtifact(),
                                   cls["Progress"](report)],
                task_scheduler="round-robin",
                space=ms.space_generator.ScheduleFn(_space_fn(func, target.family, configs), sch_rules=[],
                                                    postprocs=[], mutator_probs={}),
                strategy=cls["EnumerateSpaces"](resume, stop), num_tuning_cores=1, seed=0)
            summary["kernels"].append(_kernel_summary(database, func, name, info, calls, configs, scale))
        if stop.get("interrupted"):
            raise KeyboardInterrupt
    finally:
        signal.signal(signal.SIGINT, previous)
        shutil.rmtree(workdir, ignore_errors=True)
    summary["seconds"] = round(time.monotonic() - t_start, 1)
    return summary
