"""In-place standalone depthwise convolutions: a depthwise kernel that does not fuse with a
pointwise one (EfficientNet's, before squeeze-excitation; every one under --no-fuse) runs output
row by output row, and the memory plan may put its output over the input rows it has consumed."""

from dataclasses import replace

import numpy as np
import pytest

from edgecompile.codegen.memory import replay_plan, streaming_overlaps
from edgecompile.compiler import BuildOptions, Progress, compile_model, write_build
from edgecompile.ir.frontend import ModelOptions, load_model
from edgecompile.ir.operators import Kind
from edgecompile.platforms.host import HostModel
from edgecompile.targets import load_target
from helpers import random_input

# (model, options, fuse): EfficientNet's depthwise convolutions never fuse; MobileNet V2's only
# stay alone under --no-fuse
MODELS = {
    "mobilenet_v2": (dict(width_mult=0.35, resolution=64, num_classes=10), False),
    "efficientnet_b0": (dict(resolution=64, num_classes=10), True),
}


def _source(family):
    return load_model(family, ModelOptions(**MODELS[family][0]))


def _options(family, quant, **kw):
    return BuildOptions(quant=quant, fuse=MODELS[family][1], compare_unfused=False, **kw)


def _dw_in_place(calls):
    return [c for c in calls if c["kind"] == Kind.CONV_DW and c["in_place"]]


def _int8_inputs(report, shape, seeds):
    qp = report["quant"]["input"]
    return [np.clip(np.round(random_input(shape, s) / qp["scale"]) + qp["zero_point"], -128, 127).astype(np.int8)
            for s in seeds]


@pytest.mark.parametrize("family,quant", [
    pytest.param("mobilenet_v2", "int8", marks=pytest.mark.slow),        # 70 s here
    ("mobilenet_v2", "fp32"),                                            # 21 s
    pytest.param("efficientnet_b0", "int8", marks=pytest.mark.slow),     # 200 s
    pytest.param("efficientnet_b0", "fp32", marks=pytest.mark.slow),     # 35 s
])
def test_in_place_depthwise_matches_no_in_place_on_host(tmp_path, family, quant):
    """The same model built with in-place depthwise (default) and with --no-in-place, run on this
    machine: identical int8 bytes, identical fp32 values, on inputs whose outputs differ; the
    in-place arena is smaller and depthwise outputs do overlap their inputs."""
    source = _source(family)
    target = load_target("host")
    rep = write_build(source, target, tmp_path / "in", _options(family, quant), Progress(quiet=True))
    ref = write_build(source, target, tmp_path / "no", _options(family, quant, in_place=False), Progress(quiet=True))
    assert _dw_in_place(rep["calls"]), "no depthwise output overlaps its input"
    assert not any(c["in_place"] for c in ref["calls"])
    assert rep["arena_bytes"] < ref["arena_bytes"]
    a, b = HostModel(tmp_path / "in"), HostModel(tmp_path / "no")
    shape = source.inputs[0].shape
    xs = _int8_inputs(rep, shape, range(3)) if quant == "int8" else [random_input(shape, s) for s in range(3)]
    outs = [b.run(x)[0] for x in xs]
    flat = np.stack([o.reshape(-1).astype(np.float64) for o in outs])
    assert float((flat.max(0) - flat.min(0)).max()) > (2 if quant == "int8" else 1e-3), "outputs hardly depend on the input"
    for x, want in zip(xs, outs):
        assert a.run(x)[0].tobytes() == want.tobytes()


def _compiled(family, quant, in_place=True):
    c = compile_model(_source(family), load_target("host"), _options(family, quant, in_place=in_place),
                      Progress(quiet=True))
    return c, [c.kernel_infos[x["name"]] for x in c.calls]


@pytest.mark.parametrize("family,quant", [
    pytest.param("mobilenet_v2", "int8", marks=pytest.mark.slow),        # 19 s
    ("efficientnet_b0", "fp32"),                                         # 9 s
    pytest.param("efficientnet_b0", "int8", marks=pytest.mark.slow),     # 50 s
])
def test_byte_replay_of_in_place_depthwise(family, quant):
    """The plan's in-place depthwise pairs replayed byte by byte (each output row written before
    its window is read: the worst order within a row) find no clobbered read; the output placed
    exactly at the computed limit is still sound, one output row further into the input is not."""
    c, infos = _compiled(family, quant)
    prog, plan = c.program, c.plan
    assert plan.overlaps() == [] and replay_plan(prog, plan, infos) == []
    limits = {(o.out, o.inp): o for o in streaming_overlaps(prog, infos)}
    used = [(i, call) for i, call in enumerate(prog.calls)
            if infos[i].kind == Kind.CONV_DW and any(o.out == prog.storage_root(call.outputs[0]) for o in plan.in_place)]
    assert used, "no standalone depthwise is planned in place"
    for i, call in used:
        out, inp = prog.storage_root(call.outputs[0]), prog.storage_root(call.inputs[0])
        delta = limits[(out, inp)].max_delta
        row = prog.tensors[out].nbytes // prog.tensors[out].shape[1]
        # the output alone over its input, the other buffers out of the way
        base = max(plan.offsets[inp], -delta)
        lone, top = {}, base + plan.sizes[inp] + 64
        for r in sorted(plan.offsets):
            lone[r], top = top, top + plan.sizes[r] + 64
        for ok, shift in ((True, 0), (False, row)):
            offsets = {**lone, inp: base, out: base + delta + shift}
            arena = max(o + plan.sizes[r] for r, o in offsets.items())
            bad = replay_plan(prog, replace(plan, offsets=offsets, arena_bytes=arena), infos)
            ours = [b for b in bad if b.startswith(f"call {i} reads {call.inputs[0]} ")]
            assert (not ours) == ok, (i, call.kernel, shift, bad)


def test_no_in_place_and_restrict():
    """--no-in-place turns the depthwise overlaps off. A depthwise kernel whose call is planned in
    place no longer declares its input and output `restrict` (they overlap); the same kernel in
    the --no-in-place build has the same C otherwise, and keeps `restrict`."""
    c, _ = _compiled("mobilenet_v2", "fp32")
    n, _ = _compiled("mobilenet_v2", "fp32", in_place=False)
    assert n.plan.in_place == [] and not any(x["in_place"] for x in n.calls)
    a, b = c.files["model.c"].decode(), n.files["model.c"].decode()
    assert _dw_in_place(c.calls)
    for call in _dw_in_place(c.calls):
        head = next(ln for ln in a.splitlines() if ln.startswith(f"static __attribute__((noinline)) int32_t {call['name']}("))
        plain = next(ln for ln in b.splitlines() if ln.startswith(f"static __attribute__((noinline)) int32_t {call['name']}("))
        assert head.count("restrict") == plain.count("restrict") - 2
        assert head.replace("restrict ", "") == plain.replace("restrict ", "")


@pytest.mark.slow
def test_in_place_depthwise_on_a_board(tmp_path):
    """MobileNet V2 --no-fuse int8 on the emulated Cortex-M4 board through `edgecompile test`
    (100 s here): depthwise outputs over their inputs on the device, the same bytes as the same
    model.c compiled for this machine and as the kernel graph on TVM's VM."""
    import json

    from helpers import run_cli

    out = tmp_path / "b"
    run_cli("build", "mobilenet_v2", "--width-mult", "0.35", "--resolution", "64", "--num-classes", "10",
            "--quant", "int8", "--target", "mps2-an386", "--no-fuse", "--out", str(out), "-q", check=True)
    rep = json.loads((out / "report.json").read_text())
    assert _dw_in_place(rep["calls"]) and rep["arena_bytes"] < rep["largest_live_set_bytes"]
    proc = run_cli("test", str(out), "--samples", "3", "--json")
    res = json.loads(proc.stdout)
    assert proc.returncode == 0 and res["passed"], proc.stdout + proc.stderr
    assert res["host_int8"]["samples_differing"] == 0 and res["kernel_graph"]["samples_differing"] == 0


def test_inspect_names_the_in_place_depthwise_calls():
    """`inspect --target` lists the calls planned in place."""
    from edgecompile.measure.inspection import _format_memory_plan, memory_plan

    m = memory_plan(_source("mobilenet_v2"), load_target("host"), _options("mobilenet_v2", "fp32"),
                    Progress(quiet=True))
    dw = [c for c in m["in_place"] if c["kind"] == "conv_dw"]
    assert dw and all(c["kernel"].startswith("ec_conv_dw_") for c in dw)
    line = next(ln for ln in _format_memory_plan(m) if ln.startswith("in place: "))
    assert f"{len(dw)} depthwise" in line and str(dw[0]["call"]) in line, line
