"""Patch-based execution (ir/patches.py): the first layers of a network run in row bands and give
the same results as the whole-tensor build (int8: the same bytes), on the host and on a board."""

from pathlib import Path

import numpy as np
import pytest

from edgecompile.compiler import BuildOptions, Progress, write_build
from edgecompile.ir.frontend import ModelOptions, load_model
from edgecompile.platforms.host import HostModel
from edgecompile.targets import load_target
from helpers import assert_close, board_outputs, output_spread, random_input

# family: (model options, window layers of the patch stage at most, stage-output rows per band).
# The stages reach the structures each family has early: MobileNet V2's first residual add,
# Xception's first block (separable convolutions, max pooling, the strided 1x1 shortcut),
# SqueezeNet's first fire module (a channel concatenation), ShuffleNet's max pooling,
# EfficientNet's stem and first depthwise convolution (int8: sigmoid tables on the way).
# 3 rows per band: the last band is shorter than the others.
STAGES = {
    "mobilenet_v1": (dict(width_mult=0.25, resolution=64, num_classes=10), 5, 3),
    "mobilenet_v2": (dict(width_mult=0.35, resolution=64, num_classes=10), 9, 3),
    "shufflenet_v1": (dict(groups=3, width_mult=0.5, resolution=64, num_classes=10), 2, 3),
    "shufflenet_v2": (dict(width_mult=0.5, resolution=64, num_classes=10), 2, 3),
    "squeezenet1_0": (dict(resolution=64, num_classes=10), 5, 3),
    "squeezenet1_1": (dict(resolution=64, num_classes=10), 5, 3),
    "xception": (dict(resolution=64, num_classes=10), 8, 3),
    "efficientnet_b0": (dict(resolution=64, num_classes=10), 2, 3),
}
QUICK = {"mobilenet_v1", "mobilenet_v2"}


def _build(source, out, target="host", **opts):
    return write_build(source, load_target(target), out, BuildOptions(compare_unfused=False, **opts),
                       Progress(quiet=True))


def _int8_inputs(report, shape, seeds=range(3)):
    qp = report["quant"]["input"]
    return [np.clip(np.round(random_input(shape, s) / qp["scale"]) + qp["zero_point"], -128, 127).astype(np.int8)
            for s in seeds]


def _assert_int8_depends_on_input(outs):
    """int8 outputs of different inputs differ (else equal bytes would prove nothing)."""
    flat = np.stack([o.reshape(-1).astype(np.int32) for o in outs])
    assert int((flat.max(0) - flat.min(0)).max()) >= 4, f"int8 outputs hardly depend on the input: {flat}"


def _assert_same_results(source, quant: str, plain: dict, build: Path, reference: Path) -> None:
    """Host build `build` against the plain build `reference` (report `plain`) on inputs whose
    outputs differ: int8 the same bytes, fp32 within 1e-5 of the outputs' spread."""
    shape = source.inputs[0].shape
    a, b = HostModel(build), HostModel(reference)
    if quant == "int8":
        xs = _int8_inputs(plain, shape)
        outs = [b.run(x)[0] for x in xs]
        _assert_int8_depends_on_input(outs)
        for x, ref in zip(xs, outs):
            assert a.run(x)[0].tobytes() == ref.tobytes()
    else:
        xs = [random_input(shape, s) for s in range(3)]
        refs = [b.run(x)[0] for x in xs]
        spread = output_spread(refs)
        for x, ref in zip(xs, refs):
            assert_close(a.run(x)[0], ref, spread, 1e-5)


@pytest.mark.parametrize("family,quant", [
    pytest.param(f, q, marks=() if f in QUICK and (f, q) != ("mobilenet_v2", "int8") else pytest.mark.slow)
    for f in STAGES for q in ("fp32", "int8")])     # MobileNet V2 int8: 54 s on CI, slow
def test_patched_matches_plain_on_host(tmp_path, family, quant):
    """Lean windows too on MobileNet V1: depthwise windows per channel tile, small buffers in the arena."""
    opts, layers, rows = STAGES[family]
    source = load_model(family, ModelOptions(**opts))
    patched = _build(source, tmp_path / "patched", quant=quant, patch=(layers, rows),
                     lean_windows=family == "mobilenet_v1")
    plain = _build(source, tmp_path / "plain", quant=quant)
    plan = patched["patch_plan"]
    assert plan["layers"] >= 2 and plan["bands"] > 1 and plan["layers"] <= layers
    assert plan["band_rows"][-1][1] - plan["band_rows"][-1][0] <= rows
    assert patched["kernels"] > plain["kernels"]          # the stage's kernels run once per band
    _assert_same_results(source, quant, plain, tmp_path / "patched", tmp_path / "plain")


def test_patched_int8_bytes_on_a_board(tmp_path):
    """Patched and plain firmware on the emulated Cortex-M7 board (its own budget: the in-place
    transpose, the band views and the overlapping stage output run on the device)."""
    source = load_model("mobilenet_v1", ModelOptions(width_mult=0.25, resolution=64, num_classes=10))
    outs = []
    for name, patch in (("patched", (5, 2)), ("plain", None)):
        rep = _build(source, tmp_path / name, target="stm32f746g-disco", quant="int8", patch=patch,
                     lean_windows=patch is not None, stream_input=False)   # streamed: test_stream_input.py
        xs = _int8_inputs(rep, source.inputs[0].shape, range(4))
        outs.append(board_outputs("stm32f746g-disco", tmp_path / name, rep, xs, timeout=60, dtype="int8"))
        if patch:
            assert rep["patch_plan"]["in_place_input"] and rep["arena_bytes"] < rep["largest_live_set_bytes"]
    _assert_int8_depends_on_input(outs[1])
    for got, ref in zip(*outs):
        assert got.tobytes() == ref.tobytes()


# ----------------------------------------------------------------------------- the memory plan


def _compiled(family, quant, patch, target="stm32f746g-disco", lean=False):
    """The compiled plan with the whole input in the arena (the stage output overlaps it); the
    streamed input's plans are replayed in test_stream_input.py."""
    from edgecompile.compiler import compile_model

    opts = STAGES[family][0]
    c = compile_model(load_model(family, ModelOptions(**opts)), load_target(target),
                      BuildOptions(quant=quant, patch=patch, lean_windows=lean, compare_unfused=False,
                                   stream_input=False),
                      Progress(quiet=True))
    return c, [c.kernel_infos[x["name"]] for x in c.calls]


@pytest.mark.parametrize("family,quant,patch,lean", [
    ("mobilenet_v1", "int8", (4, 1), False), ("mobilenet_v1", "int8", (5, 2), True), ("mobilenet_v1", "fp32", (5, 3), False),
    pytest.param("mobilenet_v2", "int8", (9, 2), True, marks=pytest.mark.slow), ("squeezenet1_1", "fp32", (5, 1), True),
    pytest.param("xception", "int8", (8, 4), False, marks=pytest.mark.slow),      # 40 s
])
def test_byte_replay_of_patched_plans_finds_no_clobbered_read(family, quant, patch, lean):
    """Every read of every tensor, replayed byte by byte over the planned arena, finds the bytes
    its producer wrote: the stage output overlapping the input, the band views, the in-place
    pairs of band kernels and of the layers after the stage."""
    from edgecompile.codegen.memory import replay_plan

    # Xception (int8: 20 MB) and SqueezeNet (fp32: 2.9 MB) weights are over the board's 1 MB flash,
    # refused before compiling: their plans are the host's
    board = "host" if family in ("xception", "squeezenet1_1") else "stm32f746g-disco"
    c, infos = _compiled(family, quant, patch, board, lean)
    assert any(o.interleaved for o in c.plan.in_place), "the stage output does not overlap its input"
    assert c.plan.overlaps() == []
    assert replay_plan(c.program, c.plan, infos) == []


@pytest.mark.parametrize("family,quant,target", [("mobilenet_v1", "fp32", "host"), ("mobilenet_v2", "int8", "mps2-an386"),
                                                  ("xception", "fp32", "host")])
def test_byte_replay_of_plain_plans_finds_no_clobbered_read(family, quant, target):
    """The same replay for whole-tensor builds: the planner's in-place chains (fused kernels
    writing before their input, each output placed to leave room for the next)."""
    from edgecompile.codegen.memory import replay_plan

    c, infos = _compiled(family, quant, None, target)
    assert c.plan.in_place and replay_plan(c.program, c.plan, infos) == []


def test_byte_replay_catches_an_overlap_beyond_its_limit():
    """The replay is no formality: the stage output moved 16 bytes further into the input than
    the band order allows makes a later band read a byte the output overwrote."""
    from dataclasses import replace

    from edgecompile.codegen.memory import replay_plan

    c, infos = _compiled("mobilenet_v1", "int8", (5, 2))
    (stage,) = [o for o in c.plan.in_place if o.interleaved]
    offsets = dict(c.plan.offsets)
    offsets[stage.out] = offsets[stage.inp] + stage.max_delta + 16
    bad = replay_plan(c.program, replace(c.plan, offsets=offsets), infos)
    assert bad and f"after {stage.out} wrote there" in bad[0]


def test_per_layer_comparison_of_a_patched_build_says_it_is_not_supported(tmp_path):
    """`run --layers` rebuilds the kernel graph on TVM's VM, which runs no kernel on a band view
    (a byte offset): a patched build gets one error line saying so, not a wrong comparison."""
    from helpers import run_cli

    source = load_model("mobilenet_v1", ModelOptions(**STAGES["mobilenet_v1"][0]))
    _build(source, tmp_path / "b", patch=(4, 2))
    np.save(tmp_path / "x.npy", random_input(source.inputs[0].shape, 0))
    proc = run_cli("run", str(tmp_path / "b"), "--input", str(tmp_path / "x.npy"), "--layers")
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode != 0 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "patch-based build (the first 4 layers in" in errors[0] and "--patches off" in errors[0]


# ----------------------------------------------------------------------------- the in-place transpose


@pytest.mark.parametrize("c,h,w,dtype,misalign", [
    (3, 96, 96, "int8", 0),      # RGB bytes: the word-interleaving path
    (3, 7, 5, "int8", 0),        # 35 pixels: steps and the interleaving tail not multiples of 4
    (3, 16, 16, "int8", 1),      # storage off word alignment: the byte path
    (1, 9, 9, "int8", 0), (4, 6, 10, "int8", 2), (3, 12, 12, "float32", 0), (5, 3, 11, "float32", 0),
])
def test_in_place_transpose_builtin(tmp_path, c, h, w, dtype, misalign):
    """codegen/builtins.py's NCHW -> NHWC in the input's own storage, compiled by the host C
    compiler and run on random data: the exact bytes of numpy's transpose."""
    import ctypes
    import subprocess

    from edgecompile.codegen.builtins import transpose_in_place
    from edgecompile.ir.program import KernelCall, Program, Tensor

    prog = Program(["x"], ["y"], {"x": Tensor("x", (1, c, h, w), dtype, "input"),
                                  "y": Tensor("y", (1, h, w, c), dtype, "output", alias_of="x")}, {}, [])
    src, _info = transpose_in_place(KernelCall("t", ["x"], ["y"], builtin="transpose_in_place"), prog, "ec_t")
    (scratch,) = src.scratch_bytes
    (tmp_path / "t.c").write_text("#include <stdint.h>\n#include <string.h>\n" + src.c_code.replace(
        "static __attribute__((noinline)) int32_t ec_t(", "int32_t ec_t("))
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(tmp_path / "t.so"), str(tmp_path / "t.c")], check=True)
    lib = ctypes.CDLL(str(tmp_path / "t.so"))
    rng = np.random.default_rng(c * 1000 + h * 10 + w)
    x = (rng.integers(-128, 128, (1, c, h, w)) if dtype == "int8" else rng.standard_normal((1, c, h, w))).astype(dtype)
    store = np.zeros(x.nbytes + 16, np.uint8)
    at = (-store.ctypes.data) % 8 + misalign
    store[at:at + x.nbytes] = x.view(np.uint8).ravel()
    work = np.zeros(scratch + 8, np.uint8)
    ptr = ctypes.c_void_p(store.ctypes.data + at)
    assert lib.ec_t(ptr, ptr, ctypes.c_void_p(work.ctypes.data)) == 0
    got = store[at:at + x.nbytes].view(dtype).reshape(1, h, w, c)
    assert got.tobytes() == x.transpose(0, 2, 3, 1).tobytes()


# ----------------------------------------------------------------------------- cached halo rows


# (family, quant, rows per band): both MobileNets' stages hold stride-2 convolutions; 1 and 2 rows
# per band, the last band of the 16-row stage output shorter with 3
CACHED = [
    ("mobilenet_v1", "int8", 1),
    pytest.param("mobilenet_v2", "int8", 2, marks=pytest.mark.slow),      # 60 s
    pytest.param("mobilenet_v1", "fp32", 2, marks=pytest.mark.slow),
    pytest.param("mobilenet_v2", "fp32", 1, marks=pytest.mark.slow),
    pytest.param("mobilenet_v2", "int8", 3, marks=pytest.mark.slow),
]


@pytest.mark.parametrize("family,quant,rows", CACHED)
def test_cached_halo_matches_plain_on_host(tmp_path, family, quant, rows):
    """Halo rows kept from the band before instead of recomputed: the MACs of the plain build
    exactly, rows copied instead, and its results (int8: the same bytes; fp32 within 1e-5)."""
    opts, layers, _ = STAGES[family]
    source = load_model(family, ModelOptions(**opts))
    cached = _build(source, tmp_path / "cached", quant=quant, patch=(layers, rows, "cached"))
    plain = _build(source, tmp_path / "plain", quant=quant)
    plan = cached["patch_plan"]
    assert plan["halo"] == "cached" and plan["bands"] > 2 and plan["rows_copied"] > 0 and plan["bytes_copied"] > 0
    assert plan["extra_macs"] == 0 and cached["macs"] == plain["macs"]
    assert "ec_copy_rows" in (tmp_path / "cached" / "model.c").read_text()
    _assert_same_results(source, quant, plain, tmp_path / "cached", tmp_path / "plain")


_CACHED_PLANS: dict = {}


def _cached_plan(family="mobilenet_v1", patch=(5, 1, "cached")):
    key = (family, patch)
    if key not in _CACHED_PLANS:
        _CACHED_PLANS[key] = _compiled(family, "int8", patch)
    return _CACHED_PLANS[key]


def test_byte_replay_of_a_cached_halo_plan_finds_no_clobbered_read():
    """The halo buffers live from band to band while every other band buffer comes and goes
    around them, and each copy's destination may lie over its source (a ring): replayed byte by
    byte, every read finds what its producer wrote."""
    from edgecompile.codegen.memory import replay_plan

    c, infos = _cached_plan()
    copies = [k for k in c.program.calls if k.builtin == "copy_rows"]
    assert copies and c.patch_plan.halo == "cached"
    assert c.plan.overlaps() == []
    assert replay_plan(c.program, c.plan, infos) == []


def test_byte_replay_catches_a_clobbered_halo_row():
    """A wrong plan: a band buffer made while a halo buffer waits for the next band, placed over
    it. The replay names the copy that then reads bytes another buffer wrote."""
    from dataclasses import replace

    from edgecompile.codegen.memory import replay_plan

    c, infos = _cached_plan()
    prog, plan = c.program, c.plan
    # a halo buffer: written by a copy, read by a later copy into the next band's buffer
    calls = prog.calls
    i, copy = next((i, k) for i, k in enumerate(calls) if k.builtin == "copy_rows"
                   and prog.storage_root(k.outputs[0]) not in prog.assembled)
    halo = prog.storage_root(copy.outputs[0])
    reader = next(j for j in range(i + 1, len(calls)) if any(prog.storage_root(t) == halo for t in calls[j].inputs))
    assert calls[reader].builtin == "copy_rows"
    # a buffer first written between the two, not the halo's own
    victim = next(prog.storage_root(t) for k in calls[i + 1:reader] for t in k.outputs
                  if prog.storage_root(t) not in (halo,) and plan.lifetimes[prog.storage_root(t)][0] > i)
    assert replay_plan(prog, plan, infos) == []
    offsets = dict(plan.offsets)
    offsets[victim] = offsets[halo]
    bad = replay_plan(prog, replace(plan, offsets=offsets), infos)
    assert bad and bad[0].startswith(f"call {reader} reads") and f"after {victim} wrote there" in bad[0], bad


def test_copy_rows_builtin(tmp_path):
    """codegen/builtins.py's row copy, compiled by the host C compiler: the source's bytes at the
    destination, word-aligned or not, with the destination overlapping the source from below
    (a ring of line buffers); a destination overlapping from above is refused (-1)."""
    import ctypes
    import subprocess

    from edgecompile.codegen.builtins import copy_rows
    from edgecompile.ir.program import KernelCall, Program, Tensor

    n = 3 * 37
    prog = Program(["x"], ["y"], {"x": Tensor("x", (1, 3, 37, 1), "int8", "input"),
                                  "y": Tensor("y", (1, 3, 37, 1), "int8", "output")}, {}, [])
    src, _info = copy_rows(KernelCall("c", ["x"], ["y"], builtin="copy_rows"), prog, "ec_c")
    (tmp_path / "c.c").write_text("#include <stdint.h>\n#include <stddef.h>\n" + src.c_code.replace(
        "static __attribute__((noinline)) int32_t ec_c(", "int32_t ec_c("))
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(tmp_path / "c.so"), str(tmp_path / "c.c")], check=True)
    lib = ctypes.CDLL(str(tmp_path / "c.so"))
    rng = np.random.default_rng(0)
    for s_off, d_off in ((0, 200), (4, 0), (1, 0), (64, 8), (40, 37), (8, 8)):
        store = np.zeros(400, np.uint8)
        base = (-store.ctypes.data) % 16
        data = rng.integers(0, 256, n).astype(np.uint8)
        store[base + s_off: base + s_off + n] = data
        rc = lib.ec_c(ctypes.c_void_p(store.ctypes.data + base + s_off), ctypes.c_void_p(store.ctypes.data + base + d_off))
        assert rc == 0 and store[base + d_off: base + d_off + n].tobytes() == data.tobytes(), (s_off, d_off)
    store = np.zeros(400, np.uint8)
    assert lib.ec_c(ctypes.c_void_p(store.ctypes.data), ctypes.c_void_p(store.ctypes.data + 4)) == -1


@pytest.mark.slow
def test_cached_halo_bytes_on_a_board(tmp_path):
    """A cached-halo build on the emulated Cortex-M7 board through `edgecompile test`: the
    device's bytes equal those of the same model.c compiled for this machine."""
    import json

    from helpers import run_cli

    out = tmp_path / "b"
    run_cli("build", "mobilenet_v2", "--width-mult", "0.35", "--resolution", "64", "--num-classes", "10",
            "--quant", "int8", "--target", "stm32f746g-disco", "--patches", "9:2:cached", "--out", str(out), "-q",
            check=True)
    rep = json.loads((out / "report.json").read_text())
    assert rep["patch_plan"]["halo"] == "cached" and rep["patch_plan"]["extra_macs"] == 0
    proc = run_cli("test", str(out), "--samples", "3", "--json")
    res = json.loads(proc.stdout)
    assert proc.returncode == 0 and res["passed"], proc.stdout + proc.stderr
    assert res["host_int8"]["samples_differing"] == 0


def test_planner_offers_cached_halo_plans_costed_by_bytes_copied():
    """The memory planning's candidates: for every stage and band height whose halo would be
    recomputed, the same bands with the halo cached, costed (before lowering: the
    instructions they add, estimated by codegen/cost.extra_estimate) by the bytes they copy instead of
    MACs, each also with one-row dw+pw tiles; `--patches L:R:cached` parses to such a plan."""
    from edgecompile import compiler
    from edgecompile.cli import _patches_option
    from edgecompile.codegen import cost
    from edgecompile.ir import patches

    source = load_model("mobilenet_v1", ModelOptions(**STAGES["mobilenet_v1"][0]))
    target = load_target("host")
    graph, _ = compiler._graph(source, target, BuildOptions(quant="fp32"), lambda m: None)
    stage = patches.find_stage(graph)
    coef = target.cost.coefficients()
    plans = compiler._plans(graph, coef, 10 ** 9, 10 ** 9, None, None)      # one instruction per MAC
    cached = [p for p in plans if p.patch and p.patch[2:] == ("cached",)]
    assert len(cached) >= 6
    for p in cached:
        cut = patches.best_cuts(stage)[p.patch[0]]
        assert p.bytes_copied == patches.cached_copies(stage, cut, p.patch[1])[1]
        assert p.extra_macs == patches.patch_macs(stage, cut, p.patch[1], "cached") - cut.macs
        assert p.cost == cost.extra_estimate(coef, 1.0, p.extra_macs, p.bytes_copied)
        recomputed = patches.patch_macs(stage, cut, p.patch[1]) - cut.macs
        # a row copied per halo row, not the row recomputed
        assert 0 < p.cost < cost.extra_estimate(coef, 1.0, recomputed, 0)
    assert {p.dwpw_rows for p in cached} == {None, 1}
    assert [p.cost for p in plans] == sorted(p.cost for p in plans)
    assert _patches_option("5:2:cached") == ((5, 2, "cached"), "auto")
    assert _patches_option("5:2") == ((5, 2), "auto")


# ----------------------------------------------------------------------------- a second stage


# MobileNet V2's first stage to the end of block 4 (12 layers, the 28x28x32 tensor at 224), a
# second one from there through block 10 (18 more layers, 14x14x64 at 224: the 28x28x192 and
# 14x14x384 expansions a band at a time), its expansions' halo rows recomputed from the block
# inputs' cached ones ("narrow"); 8 and 4 one-row bands here
SECOND = (dict(width_mult=0.35, resolution=64, num_classes=10), (12, 1, "cached"), (18, 1, "narrow"))


def _second_stage_plan(target="mps2-an386"):
    from edgecompile.compiler import compile_model

    opts, first, second = SECOND
    return compile_model(load_model("mobilenet_v2", ModelOptions(**opts)), load_target(target),
                         BuildOptions(quant="int8", patch=first, patch2=second, lean_windows=True, dwpw_rows=1,
                                      compare_unfused=False), Progress(quiet=True))


def test_byte_replay_of_a_second_stage_plan_finds_no_clobbered_read():
    """A second patch stage from the first stage's output (input streamed into the first): both
    stages' outputs are assembled from their bands, the second overlapping its input (the first
    one's output) as the first overlaps its own; replayed byte by byte over the planned arena,
    every read finds what its producer wrote. The plan's report says what each stage is."""
    from edgecompile.codegen.memory import replay_plan

    c = _second_stage_plan()
    plan = c.patch_plan
    assert plan.layers == 12 and plan.bands == 8 and plan.halo == "cached" and plan.input_streamed
    s2 = plan.second_stage
    assert s2["layers"] == 18 and s2["bands"] == 4 and s2["halo"] == "narrow" and s2["stage_output_shape"] == [1, 4, 4, 24]
    assert s2["extra_macs"] > 0 and s2["bytes_copied"] > 0
    stage_outputs = [t for t in c.program.assembled if list(c.program.tensors[t].shape) in ([1, 8, 8, 16], [1, 4, 4, 24])]
    assert len(stage_outputs) == 2
    assert sum(o.interleaved for o in c.plan.in_place) >= 2
    assert c.plan.overlaps() == []
    assert replay_plan(c.program, c.plan, [c.kernel_infos[x["name"]] for x in c.calls]) == []


def test_narrow_halo_keeps_the_block_inputs_rows_not_the_expansions():
    """"narrow" halo rows: of MobileNet V2's second stage no widening 1x1 convolution's output
    (nor its rescale/activation) keeps rows from band to band; the narrow tensors do, and the
    recomputed expansion rows are the only extra MACs (fewer bytes copied than "cached")."""
    from edgecompile import compiler
    from edgecompile.ir import patches

    opts, first, second = SECOND
    source = load_model("mobilenet_v2", ModelOptions(**opts))
    graph, _ = compiler._graph(source, load_target("host"), BuildOptions(quant="fp32"), lambda m: None)
    g1, p1 = patches.patch_graph(graph, first[0], first[1], halo=first[2])
    stage = patches.find_stage(g1, after=patches.stage_output_var(g1))
    cut = patches.best_cuts(stage)[18]
    narrow = patches.cached_bands(stage, cut, 1, narrow=True)
    cached = patches.cached_bands(stage, cut, 1)
    nodes = {n.var: n for n in stage.nodes}
    kept_narrow = {v for b in narrow for v in b.cached}
    kept_cached = {v for b in cached for v in b.cached}
    widening = {v for v in kept_cached if patches._widening(stage, nodes[v])}
    assert widening and not widening & kept_narrow and kept_narrow
    assert all(patches._shape(v)[-1] <= 64 * 0.35 + 8 for v in kept_narrow)     # block inputs/outputs, not expansions
    assert patches.cached_copies(stage, cut, 1, True)[1] < patches.cached_copies(stage, cut, 1)[1]
    assert patches.patch_macs(stage, cut, 1, "narrow") > patches.patch_macs(stage, cut, 1, "cached") == cut.macs


@pytest.mark.slow
@pytest.mark.parametrize("quant", ["int8", "fp32"])
def test_second_stage_matches_plain_on_host(tmp_path, quant):
    """The two stages on the host: int8 the same bytes as the plain build, fp32 within 1e-5 of
    the outputs' spread; the plain build's MACs plus the recomputed expansion rows of the second
    stage. 134 s (int8) in a loaded run."""
    opts, first, second = SECOND
    source = load_model("mobilenet_v2", ModelOptions(**opts))
    two = _build(source, tmp_path / "two", quant=quant, patch=first, patch2=second, lean_windows=True, dwpw_rows=1)
    plain = _build(source, tmp_path / "plain", quant=quant)
    s2 = two["patch_plan"]["second_stage"]
    assert s2["layers"] == 18 and two["macs"] == plain["macs"] + s2["extra_macs"]
    _assert_same_results(source, quant, plain, tmp_path / "two", tmp_path / "plain")


def test_second_stage_needs_a_first_one_and_names_what_limits_it():
    from edgecompile.cli import _patches_option, _split_patch
    from edgecompile.compiler import compile_model
    from edgecompile.errors import EdgeCompileError

    assert _patches_option("12:1:cached+18:2") == ((12, 1, "cached", (18, 2)), "auto")
    assert _patches_option("12:1:cached+18:2:narrow") == ((12, 1, "cached", (18, 2, "narrow")), "auto")
    assert _split_patch(_patches_option("12:1+18:2:cached")[0]) == ((12, 1, "recomputed"), (18, 2, "cached"))
    assert _split_patch((5, 2)) == ((5, 2), None)
    assert _patches_option("12:1+18:2+3:1:narrow")[0][3] == ((18, 2), (3, 1, "narrow"))
    for bad in ("12:1+", "12:1+18:2+", "min+3:1", "12:1+off"):
        with pytest.raises(EdgeCompileError, match="--patches"):
            _patches_option(bad)
    # a plan without the explicit first stage (the plain plan, the unfused comparison) drops the second
    from edgecompile.compiler import _Plan

    explicit = BuildOptions(patch=(12, 1, "cached"), patch2=(18, 1))
    assert _Plan((12, 1, "cached"), True, 0).options(explicit).patch2 == (18, 1)
    assert _Plan(None, False, 0).options(explicit).patch2 is None
    source = load_model("mobilenet_v2", ModelOptions(**SECOND[0]))
    with pytest.raises(EdgeCompileError, match="a second patch stage needs a first one"):
        compile_model(source, load_target("host"), BuildOptions(quant="fp32", patch2=(3, 1), compare_unfused=False),
                      Progress(quiet=True))


@pytest.mark.slow
def test_second_stage_bytes_on_a_board(tmp_path):
    """Two patch stages (input streamed into the first) built by the CLI for mps2-an386 and run
    by `edgecompile test`: the device's bytes equal those of the same model.c compiled for this
    machine, which equal the plain build's (test_second_stage_matches_plain_on_host)."""
    import json

    from helpers import run_cli

    out = tmp_path / "b"
    proc = run_cli("build", "mobilenet_v2", "--width-mult", "0.35", "--resolution", "64", "--num-classes", "10",
                   "--quant", "int8", "--target", "mps2-an386", "--patches", "12:1:cached+18:1:narrow",
                   "--dwpw-rows", "1", "--lean-windows", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "then 18 layers in 4 bands of 1 rows" in proc.stdout
    rep = json.loads((out / "report.json").read_text())
    assert rep["patch_plan"]["second_stage"]["bands"] == 4 and rep["patch_plan"]["input_streamed"]
    proc = run_cli("test", str(out), "--samples", "3", "--json")
    res = json.loads(proc.stdout)
    assert proc.returncode == 0 and res["passed"], proc.stdout + proc.stderr
    assert res["host_int8"]["samples_differing"] == 0
