"""Compile-time comparison of patch plans with full-width row bands and with 2-D tiles
(`--patches K:RxC`): arena, estimated peak RAM and predicted instructions (the target's cost
model, codegen/cost.py) of each plan, every plan's memory replayed byte by byte. Kernels are
lowered, no C is compiled. Usage:

    python benchmarks/tiles_sweep.py vww      # MobileNet V1 0.25/96, 2 classes, int8, stm32f746g-disco
    python benchmarks/tiles_sweep.py mbv2     # MobileNet V2 0.35/96, 2 classes, int8, stm32f746g-disco
"""

from __future__ import annotations

import argparse
import sys

from edgecompile import compiler
from edgecompile.codegen.memory import replay_plan
from edgecompile.compiler import BuildOptions, Progress
from edgecompile.ir.frontend import ModelOptions, load_model
from edgecompile.targets import load_target

MODELS = {
    "vww": ("mobilenet_v1", dict(width_mult=0.25, resolution=96, num_classes=2)),
    "mbv2": ("mobilenet_v2", dict(width_mult=0.35, resolution=96, num_classes=2)),
}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", choices=sorted(MODELS))
    ap.add_argument("--target", default="stm32f746g-disco")
    ap.add_argument("--layers", default="4,6,8")
    ap.add_argument("--rows", default="1,2,4")
    ap.add_argument("--cols", default="1,2,3,4")
    ap.add_argument("--no-stream-input", action="store_true")
    ap.add_argument("--cached", action="store_true", help="also row bands with cached halo rows")
    args = ap.parse_args()
    family, opts = MODELS[args.model]
    source = load_model(family, ModelOptions(**opts))
    target = load_target(args.target)
    base = BuildOptions(quant="int8", compare_unfused=False, stream_input=not args.no_stream_input)
    graph, _ = compiler._graph(source, target, base, Progress(quiet=True))
    plans = [(None, False, None)]
    for k in [int(x) for x in args.layers.split(",")]:
        for r in [int(x) for x in args.rows.split(",")]:
            for c in [int(x) for x in args.cols.split(",")]:
                for lean, rows in ((False, None), (True, 1)):
                    plans.append(((k, r, "recomputed", c) if c > 1 else (k, r), lean, rows))
            if args.cached:             # the best row bands have: halo rows kept, not recomputed
                plans += [((k, r, "cached"), False, None), ((k, r, "cached"), True, 1)]
    print(f"{args.model} on {args.target}, int8, input {'whole' if args.no_stream_input else 'streamed'}")
    print(f"{'patch':>16} {'lean':>5} {'dwpw':>4} {'stage':>12} {'extra MACs':>11} {'arena':>8} {'peak est':>9} "
          f"{'pred. instr':>12} {'ratio':>6} replay")
    plain = None
    for patch, lean, rows in plans:
        plan = compiler._Plan(patch, lean, 0, dwpw_rows=rows)
        options = plan.options(base)
        try:
            plan.low = compiler._lower(graph, target, options, lambda m: None)
        except Exception as e:          # a stage that cannot be cut so (reported, not fatal)
            print(f"{str(patch):>16} {lean!s:>5} {rows or '-'!s:>4}  {e}")
            continue
        plan.estimate = compiler._estimate(target, plan.low)
        compiler._predict(plan, target, options)
        plain = plain or plan.predicted
        low = plan.low
        pp = low.patch_plan
        bad = replay_plan(low.program, low.plan, [low.infos[s] for s in low.call_symbols])
        spec = "-" if patch is None else f"{pp.layers}:{pp.rows}" + (f"x{pp.cols}" if pp.cols > 1 else "") \
            + (f":{pp.halo}" if pp.halo != "recomputed" else "")
        shape = "x".join(map(str, pp.stage_output_shape[1:])) if pp else "-"
        print(f"{spec:>16} {lean!s:>5} {rows or '-'!s:>4} {shape:>12} {pp.extra_macs if pp else 0:>11,} "
              f"{low.plan.arena_bytes:>8,} {plan.estimate.peak_ram_bytes if plan.estimate else 0:>9,} "
              f"{plan.predicted:>12,} {plan.predicted / plain:>6.3f} {'ok' if not bad else bad[0]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
