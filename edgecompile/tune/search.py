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
    a measuring program (`harness.py`, run by the target's platform); `host` times it (median, 1 thread), `emu` counts its
    instructions under the target's user-mode QEMU with our plugin (deterministic; recorded as
    instructions / clock as MetaSchedule wants seconds: emulator counts, not cycles);
  * rpc://HOST:PORT/KEY: the candidate is built as a TVM runtime module (C target, compiled with
    the target's compiler, our micro-kernels linked in) and timed by MetaSchedule's RPCRunner on
    the devices registered with a TVM RPC tracker under KEY (a farm of Pis tunes in parallel).

Records: see `records.py` (what `build` reads).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .. import proc
from ..codegen.lower import lower_kernels
from ..errors import EdgeCompileError
from ..ir.kernel import analyze
from ..platforms import platform_for
from ..schedules import apply_config, emit_ukernels, schedule, space
from ..targets import Target
from . import harness
from .records import CONFIG_KEY, _ms, config_of, db_key, open_database, workload

ms = _ms()

import tvm  # noqa: E402 - after _ms(), which keeps MetaSchedule from importing unused intrinsics
import tvm_ffi  # noqa: E402
from tvm.ir.utils import derived_object  # noqa: E402
from tvm.s_tir import Schedule  # noqa: E402
from tvm.s_tir.meta_schedule.arg_info import ArgInfo  # noqa: E402
from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder  # noqa: E402
from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback  # noqa: E402
from tvm.s_tir.meta_schedule.runner import PyRunner, RunnerFuture, RunnerResult  # noqa: E402
from tvm.s_tir.meta_schedule.search_strategy import MeasureCandidate, PySearchStrategy  # noqa: E402


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



def _build_each(build_inputs: list, root: str, prefix: str, make: Callable[[Any, Path], Path]) -> list:
    """A BuilderResult per candidate: `make(mod, fresh directory)` gives the artifact, and a
    failure is that candidate's result, not a crash."""
    out = []
    for bi in build_inputs:
        try:
            out.append(BuilderResult(str(make(bi.mod, Path(tempfile.mkdtemp(prefix=prefix, dir=root)))), None))
        except Exception as err:  # noqa: BLE001
            out.append(BuilderResult(None, f"{type(err).__name__}: {str(err)[-600:]}"))
    return out


def _candidate_config(mod: Any) -> dict | None:
    """The configuration a design space annotated on a candidate's root block (`_space_fn`)."""
    ann = mod["main"].body.block.annotations.get(CONFIG_KEY)
    return json.loads(str(ann)) if ann is not None else None


@derived_object
class HarnessBuilder(PyBuilder):
    """Schedule each candidate's configuration as a build does (`schedules.schedule` on the
    unscheduled kernel `func`: the rule with the configuration, then the family's finishing steps,
    which MetaSchedule's traces cannot hold: padding splits, rescale kernels, and the zero-start,
    fused-epilogue and kernel-row marks the lowering acts on), lower it and compile a measuring
    program, in this process. Each artifact gets its own directory (MetaSchedule deletes it after
    use). Measured without those steps, SqueezeNet 1.1's tuned kernels ran 1.1-1.6x slower inside
    the network than the rule's own ones on an AVX2 machine while the harness had them 0.56-0.94x."""

    def __init__(self, target: Target, root: str, func: Any = None) -> None:
        super().__init__()
        self.target, self.root, self.func = target, root, func

    def build(self, build_inputs: list) -> list:
        return _build_each(build_inputs, self.root, "cand-", lambda mod, d: harness.build(self._as_built(mod), self.target, d))

    def _as_built(self, mod: Any) -> Any:
        cfg = _candidate_config(mod) if self.func is not None else None
        if cfg is None:
            return mod["main"]
        func, info = schedule(self.func, self.target.family, config=cfg)
        if cfg.get("untiled") is None and info.schedule.startswith("generic.untiled"):
            raise EdgeCompileError(f"the rule rejects {json.dumps(cfg)} in a build: {info.note or 'untiled'}")
        return func


@derived_object
class HarnessRunner(PyRunner):
    """The platform runs the measuring program: host, wall clock (median); emulated, emulator
    instructions, recorded as instructions / clock_hz because MetaSchedule wants seconds."""

    def __init__(self, target: Target) -> None:
        super().__init__()
        self.target = target

    def run(self, runner_inputs: list) -> list:
        platform = platform_for(self.target)
        futures = []
        for ri in runner_inputs:
            try:
                cost = platform.run_harness(self.target, Path(ri.artifact_path))
                secs = cost if platform.harness_unit == "seconds" else cost / max(self.target.clock_hz, 1)
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
        return _build_each(build_inputs, self.root, "lib-", self._library)

    def _library(self, mod: Any, d: Path) -> Path:
        t = self.target
        rt = tvm.compile(mod, target=tvm.target.Target({"kind": "c"}))
        code = lower_kernels({"k": mod["main"]}, {"kind": "c"})["k"].c_code
        uk = emit_ukernels(code, t.family)
        (d / "uk.c").write_text("#include <stdint.h>\n#include <string.h>\n" + uk.replace("static inline ", ""))
        proc.run([t.cc, *t.cflags, "-fPIC", "-c", str(d / "uk.c"), "-o", str(d / "uk.o")],
                 what=f"{t.cc}: compiling the micro-kernels")
        path = d / "lib.so"
        rt.export_library(str(path), addons=[str(d / "uk.o")], cc=t.cc, options=[*t.cflags, "-fPIC"])
        return path


@derived_object
class Progress(PyMeasureCallback):
    def __init__(self, report: Callable[[list, list], None]) -> None:
        super().__init__()
        self.report = report

    def apply(self, task_scheduler: Any, task_id: int, measure_candidates: list, builder_results: list,
              runner_results: list) -> None:
        errors = [b.error_msg or r.error_msg for b, r in zip(builder_results, runner_results)]
        self.report([None if r.error_msg or not r.run_secs else float(r.run_secs[0]) for r in runner_results],
                    [e for e in errors if e])


def _space_fn(func: Any, family: str, configs: list[dict]) -> Callable[[Any], list]:
    """One schedule per configuration (our rule applied with it), each annotated with its
    configuration so that `build` can apply the same rule again."""
    info = analyze(func)

    def fn(sch: Any) -> list:
        out = []
        for cfg in configs:
            s = Schedule(sch.mod)
            if not apply_config(s, info, family, cfg):
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
    platform = platform_for(target)
    if spec in ("host", "emu"):
        if spec != platform.tune_runner:
            how = "times kernels on this machine" if spec == "host" else "counts instructions in a user-mode emulator"
            raise EdgeCompileError(f"--runner {spec} {how}; it cannot measure {target.name}'s kernels ({target.cpu}): "
                                   f"use --runner {platform.tune_runner} or rpc://HOST:PORT/KEY")
        try:
            platform.check_harness(target)
        except EdgeCompileError as err:
            raise EdgeCompileError(f"--runner {spec}: {err}") from None
        return Runner(spec)
    m = re.fullmatch(r"rpc://([^:/]+):(\d+)/([\w.-]+)", spec)
    if m:
        return Runner("rpc", (m[1], int(m[2]), m[3]))
    raise EdgeCompileError(f"--runner must be host, emu or rpc://HOST:PORT/KEY, got {spec!r}")


def _measurement(runner: Runner, target: Target, workdir: Path, func: Any = None) -> tuple[Any, Any]:
    """(builder, runner) of MetaSchedule for one of our runners; `func`: the unscheduled kernel
    (HarnessBuilder schedules each candidate's configuration from it as a build does)."""
    if runner.kind == "rpc":
        host, port, key = runner.tracker
        return RuntimeModuleBuilder(target, str(workdir)), ms.runner.RPCRunner(
            rpc_config=ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=key,
                                           session_timeout_sec=120),
            evaluator_config=ms.runner.EvaluatorConfig(number=20, repeat=5, min_repeat_ms=0,
                                                       enable_cpu_cache_flush=False),
            max_workers=1)
    return HarnessBuilder(target, str(workdir), func), HarnessRunner(target)


class _ProgressLine:
    """The tuner's progress: trials done, the current kernel's best cost, an ETA."""

    def __init__(self, total: int, kernels: int, runner: Runner, scale: float, log: Callable[[str], None]) -> None:
        self.total, self.kernels, self.runner, self.scale, self.log = total, kernels, runner, scale, log
        self.done, self.t0 = 0, time.monotonic()

    def reporter(self, k: int, name: str) -> Callable[[list, list], None]:
        best: list[float] = []

        def report(costs: list, errors: list) -> None:
            self.done += len(costs)
            for e in errors[:1]:       # a failed candidate is skipped, but say why
                self.log(f"  candidate failed: {e.strip().splitlines()[-1][:300]}")
            ok = [c for c in costs if c is not None]
            if ok:
                best.append(min(ok + best))
            eta = (time.monotonic() - self.t0) / max(self.done, 1) * (self.total - self.done)
            emu = self.runner.kind == "emu"
            b = "-" if not best else f"{best[-1] * self.scale:,.0f}" if emu else f"{best[-1] * self.scale:.2f}"
            self.log(f"  [{self.done}/{self.total}] kernel {k + 1}/{self.kernels} {name[:48]}: best {b} "
                     f"({self.runner.unit.split(' (')[0]}), ETA {eta:.0f} s")

        return report


def tune(kernels: list[tuple[str, Any, int]], target: Target, runner: Runner, db: Path, trials: int | None = None,
         resume: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Tune `kernels` [(name, unscheduled PrimFunc, calls in the model)] and record the results.
    Returns a summary: per kernel, configurations measured, best and rule-default costs."""
    database = open_database(db, target)
    summary: dict[str, Any] = {"target": target.name, "runner": runner.kind, "unit": runner.unit,
                               "db": str(db / db_key(target)), "kernels": []}
    spaces = []
    for name, func, calls in kernels:
        configs, info = space(func, target.family)
        if len(configs) > 1:
            if trials:      # the rule's first `trials` configurations, and the untiled fallback
                configs = configs[:-1][:trials] + configs[-1:]
            spaces.append((name, func, calls, configs, info))
    total = sum(len(s[3]) for s in spaces)
    log(f"tuning {len(spaces)} kernels ({total} configurations) for {target.name} with the {runner.kind} runner; "
        f"costs are {runner.unit}")
    scale = 1e6 if runner.kind != "emu" else float(max(target.clock_hz, 1))
    progress = _ProgressLine(total, len(spaces), runner, scale, log)
    workdir = Path(tempfile.mkdtemp(prefix="ec-tune-"))
    stop: dict[str, bool] = {}

    def on_sigint(signum: int, frame: Any) -> None:
        if stop.get("interrupted"):            # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        stop["interrupted"] = True
        log("interrupted: finishing the candidates in flight (Ctrl-C again to stop at once)")

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        for k, (name, func, calls, configs, info) in enumerate(spaces):
            if stop.get("interrupted"):
                raise KeyboardInterrupt
            builder, run = _measurement(runner, target, workdir, func)
            ms.tune_tir(
                func, tvm.target.Target({"kind": "c"}), str(workdir / f"logs{k}"), max_trials_global=len(configs),
                num_trials_per_iter=4, builder=builder, runner=run, database=database,
                cost_model=ms.cost_model.RandomModel(),
                measure_callbacks=[ms.measure_callback.AddToDatabase(), ms.measure_callback.RemoveBuildArtifact(),
                                   Progress(progress.reporter(k, name))],
                task_scheduler="round-robin",
                space=ms.space_generator.ScheduleFn(_space_fn(func, target.family, configs), sch_rules=[],
                                                    postprocs=[], mutator_probs={}),
                strategy=EnumerateSpaces(resume, stop), num_tuning_cores=1, seed=0)
            summary["kernels"].append(_kernel_summary(database, func, name, info, calls, configs, scale))
        if stop.get("interrupted"):
            raise KeyboardInterrupt
    finally:
        signal.signal(signal.SIGINT, previous)
        shutil.rmtree(workdir, ignore_errors=True)
    summary["seconds"] = round(time.monotonic() - progress.t0, 1)
    return summary
