"""The `edgecompile` command line: argument parsing and one function per command. Commands import
what they need when they run, so `--help` and argument errors answer at once."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

from . import __version__, proc
from .errors import EdgeCompileError

MODEL_HELP = """MODEL is one of:
  a zoo name          mobilenet_v1, mobilenet_v2, shufflenet_v1, shufflenet_v2, squeezenet1_0,
                      squeezenet1_1, xception, efficientnet_b0 ... efficientnet_b7
  an ONNX file        path/to/model.onnx (use --input-shape for dynamic inputs)
  a factory           package.module:function returning an nn.Module (needs --input-shape)
"""
RAW = argparse.RawDescriptionHelpFormatter


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="zoo name, .onnx file, or package.module:factory")
    g = p.add_argument_group("model options")
    g.add_argument("--width-mult", type=float, metavar="A",
                   help="width multiplier α (MobileNet V1/V2, ShuffleNet V1; ShuffleNet V2: 0.5/1.0/1.5/2.0)")
    g.add_argument("--resolution", type=int, metavar="R",
                   help="input resolution (ρ·224): any size the network runs on, 1..1024 (Xception from 7, "
                        "SqueezeNet 1.1 from 17, 1.0 from 21)")
    g.add_argument("--num-classes", type=int, metavar="N",
                   help="classifier outputs (default: the weights file's, else 1000)")
    g.add_argument("--groups", type=int, metavar="G", help="ShuffleNet V1 group count (1, 2, 3, 4, 8)")
    g.add_argument("--seed", type=int, default=0, help="seed of the deterministic random initialisation")
    g.add_argument("--weights", metavar="FILE.pt", help="load a PyTorch state_dict instead of random weights")
    g.add_argument("--input-shape", metavar="N,C,H,W", help="input shape for ONNX files and nn.Module factories")


def _target_args(p: argparse.ArgumentParser, default: str | None = "host") -> None:
    if default is not None:
        p.add_argument("--target", default=default,
                       help=f"target name (see `edgecompile list targets`; default {default})")
    p.add_argument("--targets-dir", metavar="DIR", help="extra directory of target .toml files "
                                                        "(also $EDGECOMPILE_TARGETS)")


def _output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output")


def _check_model_args(args: argparse.Namespace) -> None:
    """Range checks that need no model (answered before torch and TVM are imported)."""
    if args.width_mult is not None and not 0 < args.width_mult <= 4:
        raise EdgeCompileError(f"--width-mult must be in (0, 4], got {args.width_mult}")
    if args.num_classes is not None and not 1 <= args.num_classes <= 100_000:
        raise EdgeCompileError(f"--num-classes must be in 1..100000, got {args.num_classes}")
    if args.resolution is not None and not 1 <= args.resolution <= 1024:
        raise EdgeCompileError(f"--resolution must be in 1..1024, got {args.resolution}")
    if args.groups is not None and args.groups < 1:
        raise EdgeCompileError(f"--groups must be at least 1, got {args.groups}")
    if args.weights is not None and not Path(args.weights).is_file():
        raise EdgeCompileError(f"--weights {args.weights}: no such file")
    if args.seed is not None and args.seed < 0:
        raise EdgeCompileError(f"--seed must be 0 or more, got {args.seed}")


def _load(args: argparse.Namespace) -> Any:
    from .ir.frontend import ModelOptions, load_model, parse_shape

    given = {k: getattr(args, k) for k in ("width_mult", "resolution", "num_classes", "seed", "weights", "groups")}
    shape = parse_shape(args.input_shape) if args.input_shape else None
    return load_model(args.model, ModelOptions(**given, input_shape=shape))


def _tuning(args: argparse.Namespace, target: Any) -> Any:
    """The tuning records a build uses: --db DIR, else the default database; none with --no-tuning."""
    if getattr(args, "no_tuning", False):
        return None
    from .tune.records import TuningRecords, db_key, default_db

    db = Path(args.db) if getattr(args, "db", None) else default_db()
    if args.db and not (db / db_key(target)).is_dir():
        raise EdgeCompileError(f"--db {db}: no tuning records for target {target.name} "
                               f"(expected {db / db_key(target)}/)")
    return TuningRecords(db, target)


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


# ----------------------------------------------------------------------------- commands


def cmd_inspect(args: argparse.Namespace) -> int:
    from .measure.inspection import format_inspection, inspect_model

    _check_model_args(args)
    patch = patches = budget = target = None
    if args.target is not None:
        from .targets import load_target

        budget = _bytes_option("--ram-budget", args.ram_budget) if args.ram_budget is not None else None
        patch, patches = _patches_option(args.patches or ("auto" if budget is not None else "min"))
        target = load_target(args.target, args.targets_dir)
    elif args.ram_budget is not None or args.quant is not None:
        raise EdgeCompileError("--quant and --ram-budget plan the memory for a target: give --target")
    source = _load(args)
    info = inspect_model(source)
    if target is not None:
        from .compiler import BuildOptions, Progress
        from .measure.inspection import memory_plan

        options = BuildOptions(compile=False, quant=args.quant, patch=_split_patch(patch)[0], patch2=_split_patch(patch)[1], patches=patches, ram_budget=budget,
                               compare_unfused=False, stream_input=not args.no_stream_input, patch_before=True)
        info["memory_plan"] = memory_plan(source, target, options, Progress(quiet=args.json))
    print(json.dumps(info, indent=2) if args.json else format_inspection(info))
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from .build_dir import check_out_dir
    from .targets import load_target

    _check_model_args(args)                           # all of this before torch and TVM are imported
    if args.dwpw_rows is not None and args.dwpw_rows < 1:
        raise EdgeCompileError(f"--dwpw-rows must be at least 1, got {args.dwpw_rows}")
    if args.calibration_samples < 1:
        raise EdgeCompileError(f"--calibration-samples must be at least 1, got {args.calibration_samples}")
    patch, patches = _patches_option(args.patches)
    budget = _bytes_option("--ram-budget", args.ram_budget) if args.ram_budget is not None else None
    if args.out:
        check_out_dir(Path(args.out), args.force)
    target = load_target(args.target, args.targets_dir)

    from .compiler import BuildOptions, Progress, write_build

    source = _load(args)
    out = Path(args.out) if args.out else Path("build") / f"{source.name}-{target.name}"
    options = BuildOptions(external_io=args.external_io, compile=not args.no_compile, fuse=not args.no_fuse,
                           in_place=not args.no_in_place, dwpw_rows=args.dwpw_rows, quant=args.quant,
                           calibration=args.calibration, calibration_samples=args.calibration_samples,
                           calibration_method=args.calibration_method, tuning=_tuning(args, target),
                           patch=_split_patch(patch)[0], patch2=_split_patch(patch)[1], patches=patches, lean_windows=args.lean_windows, ram_budget=budget,
                           perturb_first_conv=args.debug_perturb_first_conv, stream_input=not args.no_stream_input,
                           patch_before=patch is not None)
    report = write_build(source, target, out, options, Progress(args.quiet), force=args.force)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        pp = report.get("patch_plan")
        patched = (f"; first {pp['layers']} layers in {pp['bands']} bands of {pp['rows']} rows"
                   + (f" x {pp['cols']} column tiles ({pp['extra_macs']:+,} MACs)" if pp.get("cols", 1) > 1 else "")
                   + (", halo rows cached" if pp.get("halo") == "cached" else "")
                   + (", halo rows cached (expansions' recomputed)" if pp.get("halo") == "narrow" else "")
                   + "".join(f"; then {st['layers']} layers in {st['bands']} bands of {st['rows']} rows"
                             for st in _later_stages(pp))
                   + (f", input streamed ({pp['input_rows']['max_rows_held']} rows held at most)"
                      if pp.get("input_streamed") else "")) if pp else ""
        print(f"{out}: {report['kernels']} kernel calls ({report['kernel_functions']} kernels), "
              f"{report['macs']:,} MACs, weights {report['weights_bytes']:,} B, arena {report['arena_bytes']:,} B"
              + patched)
    return 0


def _patches_option(value: str) -> tuple[tuple | None, str]:
    """--patches: off | auto | min | LAYERS:ROWS[xCOLS][:cached|narrow|recomputed] -> (explicit
    patch, mode): (layers, rows[, halo[, cols]]) as BuildOptions.patch. FIRST+SECOND (two such
    stages): the first patch's tuple gets the second's as its last item (`_split_patch`)."""
    if value in ("off", "auto", "min"):
        return None, value
    first, *rest = value.split("+")
    a = _stage_option(first, value)
    if not rest:
        return a, "auto"
    later = [_stage_option(r, value) for r in rest]
    b = later[0] if len(later) == 1 else tuple(later)
    return ((*a, b) if len(a) >= 3 else (*a, "recomputed", b)), "auto"


def _stage_option(text: str, value: str) -> tuple:
    """One patch stage: LAYERS:ROWS[xCOLS][:cached|narrow|recomputed] -> (layers, rows[, halo[, cols]])."""
    parts = text.split(":")
    halo = parts.pop() if len(parts) == 3 and parts[2] in ("cached", "narrow", "recomputed") else "recomputed"
    cols = "1"
    if len(parts) == 2 and "x" in parts[1]:
        parts[1], _, cols = parts[1].partition("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in (*parts, cols)):
        raise EdgeCompileError(f"--patches must be off, auto, min or LAYERS:ROWS[xCOLS][:cached|narrow] stages "
                               f"joined by + (positive integers: window layers, rows per band, column tiles per "
                               f"band; then how halo rows are had), got {value!r}")
    if int(cols) > 1 and halo != "recomputed":
        raise EdgeCompileError(f"--patches {text}: 2-D tiles (xCOLS) recompute their halos; cached and narrow "
                               f"halos are for full-width bands")
    stage = (int(parts[0]), int(parts[1]))
    if int(cols) > 1:
        return (*stage, halo, int(cols))
    return stage + ((halo,) if halo != "recomputed" else ())


def _later_stages(pp: dict) -> list[dict]:
    """The records of the patch stages after the first (each holds the next under `second_stage`)."""
    out = []
    while pp.get("second_stage"):
        pp = pp["second_stage"]
        out.append(pp)
    return out


def _split_patch(patch: tuple | None) -> tuple[tuple | None, tuple | None]:
    """(first stage, second stage) of a `_patches_option` tuple (the second, when there is one,
    is its last item: a tuple)."""
    if patch is not None and isinstance(patch[-1], tuple):
        return patch[:-1], patch[-1]
    return patch, None


def _bytes_option(flag: str, value: str) -> int:
    """A byte count: 40000, 40K (x1024) or 1M."""
    scale = {"K": 1 << 10, "M": 1 << 20}.get(value[-1:].upper(), 1)
    digits = value[:-1] if scale > 1 else value
    if not digits.isdigit() or int(digits) == 0:
        raise EdgeCompileError(f"{flag} must be a positive number of bytes (e.g. 40000, 40K), got {value!r}")
    return int(digits) * scale


def cmd_tune(args: argparse.Namespace) -> int:
    _check_model_args(args)
    from .compiler import BuildOptions, Progress, model_kernels
    from .platforms import platform_for
    from .targets import load_target
    from .tune.records import default_db
    from .tune.search import parse_runner, tune

    target = load_target(args.target, args.targets_dir)
    runner = parse_runner(args.runner or platform_for(target).tune_runner, target)
    if args.trials is not None and args.trials < 1:
        raise EdgeCompileError(f"--trials must be at least 1, got {args.trials}")
    source = _load(args)
    progress = Progress(args.quiet)
    kernels = model_kernels(source, target, BuildOptions(quant=args.quant, calibration=args.calibration), progress)
    if args.kernel:
        kernels = [k for k in kernels if args.kernel in k[0]]
        if not kernels:
            raise EdgeCompileError(f"--kernel {args.kernel!r} matches no kernel of {source.name}")
    db = Path(args.db) if args.db else default_db()
    try:
        summary = tune(kernels, target, runner, db, trials=args.trials, resume=args.resume,
                       log=(lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True)))
    except KeyboardInterrupt:
        print(f"interrupted: the records measured so far are in {db}; --resume continues", file=sys.stderr)
        return 130
    if runner.kind == "host":      # the harness times kernels alone: keep what is faster inside the network
        from .tune.validate import validate_in_network

        summary["in_network"] = validate_in_network(
            source, target, db, BuildOptions(quant=args.quant, calibration=args.calibration),
            log=(lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True)))
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"tuned {len(summary['kernels'])} kernels for {target.name} in {summary['seconds']} s "
          f"(runner {summary['runner']}; costs in {summary['unit']}); records in {summary['db']}")
    for k in summary["kernels"]:
        d, b = k["default_cost"], k["best_cost"]
        gain = f"{d / b:.2f}x" if d and b else "-"
        verdict = summary.get("in_network", {}).get(k["kernel"])
        seen = ("" if verdict is None else
                f"  in network {verdict['tuned_ns'] / max(1, verdict['untuned_ns']):.2f}x: "
                + ("kept" if verdict["kept"] else "set aside"))
        print(f"  {k['kernel'][:56]:56} {k['configurations']:3} configs  rule {d or 0:>12,.2f}  "
              f"best {b or 0:>12,.2f}  {gain}  {json.dumps(k['best_config'])}{seen}")
    return 0


def _read_input(path: str, report: dict[str, Any]) -> Any:
    """The .npy input of `run`, checked against the model's input: exact shape, a float dtype
    (float64 is cast, with a note), finite values."""
    import numpy as np

    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise EdgeCompileError(f"{path}: cannot read .npy input: {err}") from None
    spec = report["inputs"][0]
    shape = tuple(spec["shape"])
    if x.shape != shape:
        hint = ""
        if x.ndim == 4 and len(shape) == 4 and x.shape == (shape[0], shape[2], shape[3], shape[1]):
            hint = " (this looks like NHWC; the model takes its inputs as exported, NCHW: x.transpose(0, 3, 1, 2))"
        raise EdgeCompileError(f"{path}: input has shape {x.shape}, the model expects {shape}{hint}")
    if x.dtype == np.float64:
        print(f"note: {path}: float64 input cast to float32", file=sys.stderr)
        x = x.astype(np.float32)
    elif x.dtype != np.float32:
        raise EdgeCompileError(f"{path}: input is {x.dtype}; give float32 values (the model quantizes int8 "
                               "builds' inputs itself)")
    if not np.isfinite(x).all():
        raise EdgeCompileError(f"{path}: input holds {int((~np.isfinite(x)).sum())} NaN or infinite values")
    return x


def cmd_run(args: argparse.Namespace) -> int:
    import numpy as np

    from .build_dir import read_build
    from .platforms.host import HostModel

    build = Path(args.dir)
    report = read_build(build)
    if args.output and not Path(args.output).resolve().parent.is_dir():
        raise EdgeCompileError(f"--output {args.output}: the directory {Path(args.output).parent} does not exist")
    x = _read_input(args.input, report)
    quant = report.get("quant", {})
    if args.layers:
        return _run_layers(build, report, x)
    if not (build / "libmodel.so").is_file():
        raise EdgeCompileError(f"{build}: not a host build (target {report['target']}); build with --target host, "
                               "or compare its kernels here with --layers")
    model = HostModel(build)
    if quant.get("dtype") == "int8":
        qi, qo = quant["input"], quant["output"]
        xq = np.clip(np.round(x / qi["scale"]) + qi["zero_point"], -128, 127).astype(np.int8)
        y = (model.run(xq)[0].astype(np.float32) - qo["zero_point"]) * np.float32(qo["scale"])
    else:
        y = model.run(x)[0]
    model.close()
    if args.output:
        np.save(args.output, y)
        print(f"wrote {args.output}: shape {list(y.shape)}")
    else:
        np.set_printoptions(precision=6, suppress=True, threshold=64)
        print(f"output shape {list(y.shape)}")
        print(y)
    return 0


def _run_layers(build: Path, report: dict[str, Any], x: Any) -> int:
    """`run --layers`: every kernel call of the build (its model.c compiled here with EC_TRACE)
    against the kernel graph and the ONNX graph."""
    import numpy as np

    from .measure import layers

    quant = report.get("quant", {})
    xin = x
    if quant.get("dtype") == "int8":
        qp = quant["input"]
        xin = np.clip(np.round(x / qp["scale"]) + qp["zero_point"], -128, 127).astype(np.int8)
    print("computing the references (kernel graph on TVM's VM, ONNX graph on onnxruntime)", file=sys.stderr)
    ref = layers.references(build, report, x)
    trace = layers.HostTrace(build)
    try:
        out = report["outputs"][0]
        _, traced = trace.run(xin, tuple(out["shape"]), out["dtype"])
    finally:
        trace.close()
    result = layers.compare(report, traced, ref)
    print(layers.format_layers(result))
    return 0 if result["first_divergence"] is None else 3


def cmd_bench(args: argparse.Namespace) -> int:
    import tempfile

    from .targets import load_target

    _check_model_args(args)
    target = load_target(args.target, args.targets_dir)

    from .compiler import BuildOptions, Progress, write_build
    from .measure.bench import bench, check_peers, format_bench
    from .platforms import platform_for

    if not platform_for(target).runs_here:
        raise EdgeCompileError(f"bench measures wall-clock latency on this machine; {target.name} is not this "
                               "machine: use --target host")
    peers = [p for p in args.against.split(",") if p]
    check_peers(peers)
    source = _load(args)
    tuning = _tuning(args, target)
    with tempfile.TemporaryDirectory(prefix="ec-bench-") as tmp:
        out = Path(tmp) / "build"
        report = write_build(source, target, out, BuildOptions(tuning=tuning), Progress(args.quiet or args.json))
        variants = {}
        if report["tuning"]["kernels_tuned"]:     # tuned: time the rules' own build beside it
            write_build(source, target, Path(tmp) / "untuned", BuildOptions(), Progress(True))
            variants["edgecompile-untuned"] = str(Path(tmp) / "untuned")
        res = bench(source, str(out), peers, runs=args.runs, warmup=args.warmup, variants=variants)
        res["tuned_kernels"] = report["tuning"]["kernels_tuned"]
    if args.out:
        _write_atomic(Path(args.out), json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2) if args.json else format_bench(res))
    return 0


def cmd_flash(args: argparse.Namespace) -> int:
    from .build_dir import read_build
    from .device.session import stop_detached
    from .platforms import platform_for
    from .targets import load_target

    build = Path(args.dir)
    report = read_build(build)
    state = build / "device.json"
    if args.stop:
        existed, running = stop_detached(state)
        print("stopped the emulator" if running else
              "the emulator for this build had already exited" if existed else "no emulator was running for this build")
        return 0
    target = load_target(report["target"], args.targets_dir)
    platform = platform_for(target)
    if args.device == "emu":
        stop_detached(state)
        session = platform.start_emulator(target, build, report, detach=True)
        info = session.detach(state)
        print(f"{target.name} emulator running (PID {', '.join(map(str, info['pids']))}); serial port: {info['port']}")
        print(f"  edgecompile test {build} --port {info['port']}")
        print(f"  edgecompile flash {build} --stop     (when done)")
        return 0
    for c in platform.flash(args.device, target, build, report):
        print("ran:", " ".join(c))
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    from .measure.accuracy import format_result, run_test

    quiet = args.json or args.quiet
    tty = sys.stderr.isatty() and not args.verbose

    def progress(msg: str) -> None:
        if tty:
            print("\r" + msg[:120].ljust(120), end="", file=sys.stderr, flush=True)
        else:
            print(msg, file=sys.stderr, flush=True)

    if args.layers:
        return _test_layers(args, progress if not quiet else (lambda m: None))
    result = run_test(Path(args.dir), port=args.port, samples=args.samples, dataset=args.dataset,
                      min_agreement=args.min_agreement, max_abs_error=args.max_abs_error, rtol=args.rtol,
                      timeout=args.timeout, targets_dir=args.targets_dir,
                      progress=(lambda m: None) if quiet else progress, verbose=args.verbose)
    if tty and not quiet:
        print(file=sys.stderr)
    print(json.dumps(result, indent=2) if args.json else format_result(result))
    return 0 if result["passed"] else 3


def _test_layers(args: argparse.Namespace, progress: Any) -> int:
    from .build_dir import read_build
    from .measure import layers
    from .measure.accuracy import input_data
    from .targets import load_target

    build = Path(args.dir)
    report = read_build(build)
    target = load_target(report["target"], args.targets_dir)
    x = input_data(report, args.dataset, 1).images[:1].astype("float32")
    result = layers.device_layers(build, report, target, x, args.port, args.timeout,
                                  lambda m: print(m, file=sys.stderr, flush=True))
    print(json.dumps(result, indent=2) if args.json else layers.format_layers(result))
    return 0 if result["first_divergence"] is None else 3


def cmd_train(args: argparse.Namespace) -> int:
    _check_model_args(args)
    if args.epochs < 1:
        raise EdgeCompileError(f"--epochs must be at least 1, got {args.epochs}")
    from .training import train

    source = _load(args)
    res = train(source, args.dataset, Path(args.out), epochs=args.epochs, seed=args.seed,
                progress=lambda m: print(m, file=sys.stderr, flush=True))
    print(json.dumps(res, indent=2) if args.json else
          f"wrote {res['weights']}: test accuracy {res['test_accuracy']:.3f} on {res['test_samples']} {args.dataset} images")
    return 0


def cmd_monitor(args: argparse.Namespace) -> int:
    """Watch a device's serial line: frames decoded, other bytes as text, until Ctrl-C."""
    import contextlib
    import time

    from .build_dir import read_build
    from .device.protocol import INFO, FrameDecoder, describe, encode
    from .device.session import open_port
    from .platforms import platform_for
    from .targets import load_target

    build = Path(args.dir)
    report = read_build(build)
    port = args.port
    state = build / "device.json"
    if port is None and state.exists():
        port = json.loads(state.read_text())["port"]          # the emulator `flash` started
    with contextlib.ExitStack() as stack:
        if port is None:
            target = load_target(report["target"], args.targets_dir)
            session = stack.enter_context(platform_for(target).start_emulator(target, build, report))
            serial = session.open_port()
            print(f"{target.name} emulator started; watching {session.port_url} (Ctrl-C to stop)", file=sys.stderr)
        else:
            serial = open_port(port)
            print(f"watching {port} (Ctrl-C to stop)", file=sys.stderr)
        stack.callback(serial.close)
        decoder = FrameDecoder()
        serial.write(encode(INFO, 0))           # ask the device who it is (READY went out at boot)
        deadline = time.monotonic() + args.seconds if args.seconds else None
        try:
            while deadline is None or time.monotonic() < deadline:
                data = serial.read(4096)
                for frame in decoder.feed(data):
                    print(describe(frame), flush=True)
                if decoder.noise:
                    print(decoder.noise.decode(errors="replace"), end="", flush=True)
                    decoder.noise.clear()
        except KeyboardInterrupt:
            pass
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .build_dir import read_build
    from .measure import report as rep
    from .targets import load_target

    build = Path(args.dir)
    meta = read_build(build)
    target = load_target(meta["target"], args.targets_dir)
    profile, cache = rep.measure(build, target, meta, profile=not args.no_profile, cache=args.cache)
    data = rep.collect(build, profile, cache)
    if args.html:
        written = rep.write_html(data, Path(args.html))
        print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    print(json.dumps(data, indent=2) if args.json else rep.format_text(data))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    if args.what == "targets":
        from .targets import list_targets

        targets = list_targets(args.targets_dir)
        if args.json:
            print(json.dumps([{
                "name": t.name, "description": t.description, "family": t.family, "platform": t.platform,
                "cpu": t.cpu, "clock_hz": t.clock_hz, "default_quant": t.default_quant,
                "memory": [{"name": r.name, "kind": r.kind, "origin": r.origin, "size": r.size, "holds": list(r.holds)}
                           for r in t.memory],
                "flash_bytes": sum(r.size for r in t.memory if r.kind == "flash") or None,
                "ram_bytes": sum(r.size for r in t.memory if r.kind == "ram") or None,
                "clock": None if t.clock is None else dataclasses.asdict(t.clock),
                "source": t.source} for t in targets], indent=2))
            return 0
        for t in targets:
            print(f"{t.name:20} {t.family:9} {t.cpu:12} {t.description}")
    else:
        from edgecompile.models import ZOO

        if args.json:
            print(json.dumps([{"name": e.name, "description": e.description,
                               "default_resolution": e.default_resolution, "options": dict(e.options)}
                              for e in ZOO.values()], indent=2))
            return 0
        for e in ZOO.values():
            print(f"{e.name:16} {e.default_resolution:4}px  {e.description}")
    return 0


# ----------------------------------------------------------------------------- parser


def _add_inspect(sub: Any) -> None:
    s = sub.add_parser("inspect", help="per-layer MACs, parameters and activation sizes",
                       description="Per-layer cost of a model and the share of each layer kind "
                                   "(conv, conv_dw, conv_pw, conv_group, fc, pool, other).",
                       epilog=MODEL_HELP, formatter_class=RAW)
    _model_args(s)
    s.add_argument("--target", help="also plan the memory for this target, as `build` would (no C compiled): "
                                    "the arena, the estimated peak RAM and the patch plan, with every plan tried")
    _target_args(s, default=None)
    s.add_argument("--quant", choices=["fp32", "int8"], help="with --target: number format (default: the target's)")
    s.add_argument("--patches", default=None, metavar="off|auto|min|STAGE[+STAGE...]",
                   help="with --target: as for build (default: auto with --ram-budget, as build does; else min, "
                        "the least peak RAM within 1.15x the plain plan's predicted instructions)")
    s.add_argument("--ram-budget", metavar="BYTES", help="with --target: as for build")
    s.add_argument("--no-stream-input", action="store_true", help="with --target: as for build")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(fn=cmd_inspect)


def _add_build(sub: Any) -> None:
    s = sub.add_parser("build", help="compile a model to C (and firmware) for a target",
                       description="Compile MODEL for TARGET into DIR: model.h (API), model.c (kernels + "
                                   "executor), weights, compiled artifacts and report.json. The directory is "
                                   "replaced only when the whole build succeeds.",
                       epilog=MODEL_HELP, formatter_class=RAW)
    _model_args(s)
    _target_args(s)
    s.add_argument("--out", metavar="DIR", help="output directory (default build/<model>-<target>); it must be "
                        "new, empty or a previous build (marked by .edgecompile-build): nothing else is replaced")
    s.add_argument("--force", action="store_true",
                   help="replace --out even when it is not a previous build (never the current directory)")
    s.add_argument("--external-io", action="store_true",
                   help="keep the graph input/output in caller buffers instead of the arena")
    s.add_argument("--no-compile", action="store_true", help="write sources and report only")
    s.add_argument("--no-fuse", action="store_true",
                   help="keep depthwise and pointwise convolutions as separate kernels (for comparison)")
    s.add_argument("--no-in-place", action="store_true",
                   help="never let a streaming kernel's output (fused depthwise+pointwise, depthwise) overlap the input it consumes")
    s.add_argument("--quant", choices=["fp32", "int8"],
                   help="number format (default: the target's, int8 on Cortex-M, fp32 on rpi4 and host)")
    s.add_argument("--calibration", default="digits", metavar="DATASET|FILE.npy",
                   help="int8 calibration inputs: a dataset (digits, random) or an .npy of inputs")
    s.add_argument("--calibration-samples", type=int, default=100, metavar="N")
    s.add_argument("--calibration-method", choices=["minmax", "percentile"], default="minmax")
    s.add_argument("--patches", default="auto", metavar="off|auto|min|STAGE[+STAGE...]",
                   help="run the first layers in row bands (patch-based inference): auto (default) when the plain "
                        "plan does not fit the target's RAM or --ram-budget, min for the least peak RAM within "
                        "1.15x the plain plan's predicted instructions (the target's [cost] model), off never; "
                        "or stages by hand: STAGE = LAYERS:ROWS[xCOLS][:cached|:narrow] runs LAYERS layers in "
                        "bands of ROWS output rows (xCOLS: each band in COLS column tiles, 2-D tiles whose halo "
                        "rows and columns are recomputed; cached: halo rows kept from the band before instead of "
                        "recomputed; narrow: kept except an expansion's, which are recomputed), and "
                        "FIRST+SECOND[+...] starts each further stage from the output of the one before")
    s.add_argument("--ram-budget", metavar="BYTES",
                   help="plan for at most this peak RAM (static data + arena + stack, e.g. 40K): tries patches and "
                        "lean windows, trading instructions, and refuses before compiling when nothing fits")
    s.add_argument("--lean-windows", action="store_true",
                   help="depthwise windows per channel tile and small buffers in the arena (less RAM)")
    s.add_argument("--no-stream-input", action="store_true",
                   help="with patches: keep the whole graph input in the arena (transposed in place) instead of "
                        "reading it row band by row band as the bands need it (ec_read_input_rows)")
    s.add_argument("--dwpw-rows", type=int, metavar="R",
                   help="output rows per tile of fused depthwise+pointwise kernels (default: per target family)")
    s.add_argument("--db", metavar="DIR", help="tuning database (default: $EDGECOMPILE_TUNING_DB or "
                                               "~/.cache/edgecompile/tuning); kernels with records use them")
    s.add_argument("--no-tuning", action="store_true", help="ignore tuning records: the rules' own schedules")
    # test-only: a deliberately wrong weight, to prove that `test` and `--layers` catch a broken kernel
    s.add_argument("--debug-perturb-first-conv", action="store_true", help=argparse.SUPPRESS)
    _output_args(s)
    s.set_defaults(fn=cmd_build)


def _add_tune(sub: Any) -> None:
    s = sub.add_parser(
        "tune", help="auto-tune the model's kernels with MetaSchedule; build then uses the records",
        description="Measure every configuration of every distinct kernel of MODEL (tile sizes, loop order, "
                    "rows per fused tile, untiled) with TVM MetaSchedule and record the results in a "
                    "tuning database keyed by target and kernel workload. Runners: host (wall clock on this "
                    "machine, median, 1 thread; --target host), emu (instruction counts under the target's "
                    "user-mode QEMU with our plugin: deterministic emulator counts, not cycles; Linux and "
                    "Cortex-M4/M7 targets), rpc://HOST:PORT/KEY (TVM RPC tracker; devices running "
                    "`python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY` measure in parallel). "
                    "Interrupting keeps what was measured; --resume skips it next time.",
        epilog=MODEL_HELP, formatter_class=RAW)
    _model_args(s)
    _target_args(s)
    s.add_argument("--runner", metavar="host|emu|rpc://HOST:PORT/KEY",
                   help="where candidates are measured (default: host for --target host, else emu)")
    s.add_argument("--trials", type=int, metavar="N",
                   help="at most N configurations per kernel, plus the untiled fallback (default: all)")
    s.add_argument("--kernel", metavar="SUBSTRING", help="tune only kernels whose name contains this")
    s.add_argument("--db", metavar="DIR", help="tuning database directory (default: $EDGECOMPILE_TUNING_DB or "
                                               "~/.cache/edgecompile/tuning)")
    s.add_argument("--resume", action="store_true", help="skip configurations already in the database")
    s.add_argument("--quant", choices=["fp32", "int8"], help="number format (default: the target's)")
    s.add_argument("--calibration", default="digits", metavar="DATASET|FILE.npy")
    _output_args(s)
    s.set_defaults(fn=cmd_tune)


def _add_run(sub: Any) -> None:
    s = sub.add_parser("run", help="run a host build on an input .npy (or compare any build's kernels, --layers)",
                       description="Run a model built with --target host on INPUT (.npy, float32, the model's "
                                   "input shape: NCHW for the zoo) and print or save the output (int8 builds: "
                                   "quantized and dequantized with the build's scales). --layers compiles any "
                                   "build's model.c on this machine with tracing and compares every kernel "
                                   "call's output with the kernel graph (TVM's VM) and the ONNX graph "
                                   "(onnxruntime); it prints the first call beyond tolerance (exit status 3).")
    s.add_argument("dir", metavar="DIR", help="build directory")
    s.add_argument("--input", required=True, metavar="X.npy")
    s.add_argument("--output", metavar="Y.npy", help="save the output instead of printing it")
    s.add_argument("--layers", action="store_true", help="compare every kernel call's output with the references")
    s.set_defaults(fn=cmd_run)


def _add_bench(sub: Any) -> None:
    s = sub.add_parser("bench", help="latency of the generated C vs peer runtimes (host)",
                       description="Build MODEL for the host, then time it and each peer runtime in this "
                                   "process on the same input, one thread: --warmup calls each, then --runs "
                                   "rounds of one call of each in turn; medians.",
                       epilog=MODEL_HELP, formatter_class=RAW)
    _model_args(s)
    _target_args(s)
    s.add_argument("--against", default="onnxruntime",
                   help="comma-separated peers: onnxruntime, torch, tvm-vm (TVM's stock Relax VM); with the "
                        "benchmark extras (benchmarks/run.sh): litert (TFLite + XNNPACK), tflm (TFLite Micro "
                        "reference kernels), executorch (XNNPACK backend)")
    s.add_argument("--runs", type=int, default=50)
    s.add_argument("--warmup", type=int, default=10)
    _output_args(s)
    s.add_argument("--out", metavar="FILE.json", help="also write the results as JSON")
    s.add_argument("--db", metavar="DIR", help="tuning database (default: the default one); when records "
                                               "apply, the untuned build is timed too")
    s.add_argument("--no-tuning", action="store_true", help="ignore tuning records")
    s.set_defaults(fn=cmd_bench)


def _add_flash(sub: Any) -> None:
    s = sub.add_parser("flash", help="put a build on a device (emulator by default)",
                       description="Flash DIR's firmware. --device emu (default) starts the target's emulator in "
                                   "the background and prints the serial URL to talk to it; pyocd and openocd "
                                   "program a real board through its debug probe; ssh://user@host copies the "
                                   "Raspberry Pi program with scp and starts it on the Pi's serial device.")
    s.add_argument("dir", metavar="DIR", help="build directory (from `edgecompile build --target ...`)")
    s.add_argument("--device", default="emu", help="emu | pyocd | openocd | ssh://user@host (default emu)")
    s.add_argument("--stop", action="store_true", help="stop the emulator started for DIR")
    _target_args(s, default=None)
    s.set_defaults(fn=cmd_flash)


def _add_test(sub: Any) -> None:
    s = sub.add_parser(
        "test", help="check a build on its device over serial: outputs, accuracy, counts",
        description="Stream N inputs to the device over the serial protocol and check every output. fp32 "
                    "builds: within --rtol of the spread of the fp32 reference (PyTorch for zoo models, "
                    "onnxruntime otherwise) and top-1 agreement. int8 builds: the device's bytes must equal "
                    "those of the same model.c compiled for this machine (bit-exact), and the agreement with "
                    "the fp32 reference is reported, within 64 output quantization steps by default. A "
                    "reference whose outputs do not depend on the input fails the test (the comparison would "
                    "prove nothing). Without --port the emulator is started and stopped around the test. "
                    "Exit status 3 when a check fails.")
    s.add_argument("dir", metavar="DIR")
    s.add_argument("--port", metavar="URL", help="pyserial URL: socket://host:port, /dev/ttyACM0, rfc2217://...")
    s.add_argument("--samples", type=int, default=20, help="inputs to send (default 20)")
    s.add_argument("--dataset", metavar="NAME|FILE.npy",
                   help="random (no labels), digits (labeled, scikit-learn) or an .npy of inputs (default: the "
                        "build's calibration data for int8, random for fp32)")
    s.add_argument("--min-agreement", type=float, help="minimum top-1 agreement with the fp32 reference "
                                                       "(default 0.99 for fp32 builds, not checked for int8)")
    s.add_argument("--max-abs-error", type=float, help="fail above this max |device - fp32 reference| (default: "
                                                       "--rtol x spread for fp32, 64 output steps for int8)")
    s.add_argument("--rtol", type=float, help="fp32: tolerance relative to the reference's spread (default 1e-3)")
    s.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each answer")
    s.add_argument("--verbose", "-v", action="store_true", help="a line per sample")
    s.add_argument("--layers", action="store_true",
                   help="instead: one input through the debug firmware (DIR/debug-trace, built on demand; flash it "
                        "to use --port), every kernel call's output compared with the kernel graph (TVM's VM; "
                        "int8: bit-exact) and the ONNX graph; prints the first call beyond tolerance")
    _target_args(s, default=None)
    _output_args(s)
    s.set_defaults(fn=cmd_test)


def _add_train(sub: Any) -> None:
    s = sub.add_parser("train", help="train a zoo model on a packaged dataset (seeded recipe)",
                       description="Train MODEL on DATASET (the digits set, upsampled to the model resolution) "
                                   "with a fixed seed and save its state_dict for `build --weights`. About half "
                                   "a minute for mobilenet_v1 --width-mult 0.25 --resolution 32 on 2 cores.",
                       epilog=MODEL_HELP, formatter_class=RAW)
    _model_args(s)
    s.add_argument("--dataset", default="digits")
    s.add_argument("--epochs", type=int, default=30)
    s.add_argument("--out", required=True, metavar="FILE.pt")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_train)


def _add_report(sub: Any) -> None:
    s = sub.add_parser("report", help="measured footprint, memory plan, per-kernel costs and cache behaviour",
                       description="Everything measured about build DIR: flash/RAM by section and symbol group "
                                   "(linked binary), the memory plan, per-kernel instruction counts on the emulated "
                                   "device (Cortex-M: SysTick under QEMU -icount) or wall-clock time (host), cache "
                                   "misses per kernel by simulation with the target's cache geometry (--cache: our "
                                   "QEMU plugin on ARM, valgrind cachegrind on the host), the device's stack "
                                   "high-water mark (after `edgecompile test`).")
    s.add_argument("dir", metavar="DIR")
    s.add_argument("--html", metavar="OUT.html", help="write an HTML report with plots (PNGs beside it)")
    s.add_argument("--json", action="store_true")
    s.add_argument("--cache", action="store_true", help="simulate the caches (slower: 25x emulation)")
    s.add_argument("--no-profile", action="store_true", help="skip the per-kernel profiling run")
    _target_args(s, default=None)
    s.set_defaults(fn=cmd_report)


def _add_monitor(sub: Any) -> None:
    s = sub.add_parser("monitor", help="watch a device's serial output",
                       description="Open the serial line of DIR's device (--port, else the emulator that `edgecompile "
                                   "flash` started, else a new emulator) and print what it sends: protocol frames "
                                   "decoded (INFO, RESULT, FAULT registers, NAK, TRACE), other bytes as text. Asks "
                                   "the device for its INFO first. Ctrl-C stops.")
    s.add_argument("dir", metavar="DIR")
    s.add_argument("--port", metavar="URL", help="pyserial URL: /dev/ttyACM0, socket://host:port, rfc2217://...")
    s.add_argument("--seconds", type=float, help="stop after this long (default: until Ctrl-C)")
    _target_args(s, default=None)
    s.set_defaults(fn=cmd_monitor)


def _add_list(sub: Any) -> None:
    s = sub.add_parser("list", help="list targets or zoo models")
    s.add_argument("what", choices=["targets", "models"])
    s.add_argument("--json", action="store_true", help="one JSON list (targets: with their memory budgets)")
    _target_args(s, default=None)
    s.set_defaults(fn=cmd_list)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgecompile",
        description="Compile small convolutional networks (PyTorch, ONNX) to standalone C for ARM "
                    "edge devices through Apache TVM: fused kernels, one static arena, no runtime.",
        formatter_class=RAW,
        epilog="Run `edgecompile COMMAND --help` for each command's options.",
    )
    p.add_argument("--version", action="version", version=f"edgecompile {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_add_inspect, _add_build, _add_tune, _add_run, _add_bench, _add_flash, _add_test, _add_monitor,
                _add_train, _add_report, _add_list):
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    proc.terminate_on_sigterm()
    try:
        return int(args.fn(args) or 0)
    except EdgeCompileError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:          # `edgecompile list targets --json | head`: the reader left
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
