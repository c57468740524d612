"""The memory planning weighs RAM against predicted instructions (codegen/cost.py, the target's
[cost]): `--patches min` finds, for the wake-word network on stm32f746g-disco, a plan under issue 13's
37,600 B of peak RAM within 1.15x the plain plan's instructions, trying one-row dw+pw tiles as a
plan dimension beside cached or recomputed halos and lean windows."""

import pytest

from edgecompile import compiler
from edgecompile.codegen import cost
from edgecompile.compiler import BuildOptions, Progress, write_build
from edgecompile.ir.frontend import ModelOptions, load_model
from edgecompile.ir.kernel import KernelInfo
from edgecompile.ir.operators import Kind
from edgecompile.measure.accuracy import run_test
from edgecompile.platforms.cortex_m import CortexM
from edgecompile.targets import load_target

WAKE_WORD = dict(width_mult=0.25, resolution=96, num_classes=2)
BOARD = "stm32f746g-disco"
AIM_BYTES = 37_600          # issue 13: 0.35x TFLM's arena for this network
AIM_INSTRUCTIONS = 1.15     # ... at <= 1.15x the plain plan's instructions


def test_call_features_count_what_the_kernel_does():
    """A fused dw+pw kernel's MACs split into depthwise and pointwise parts by its window and
    output channels; lean windows and one-row tiles add their terms; a halo-row copy is counted by
    its bytes alone."""
    info = KernelInfo(Kind.DWPW, 36 * (9 * 128 + 128 * 128), None, kernel=(3, 3), channels=(128, 128), rows=2)
    f = cost.call_features(info, 4608, lean=False).values
    assert f["dw"] == 36 * 9 * 128 and f["pw_fused"] == 36 * 128 * 128 and f["out_byte"] == 4608
    assert f["lean_dw"] == 0 and f["row1"] == 0 and f["call"] == 1
    one = cost.call_features(KernelInfo(**{**info.__dict__, "rows": 1}), 4608, lean=True).values
    assert one["lean_dw"] == f["dw"] and one["row1"] == info.macs
    coef = load_target(BOARD).cost.coefficients()
    assert cost.predict([cost.CallFeatures(one)], coef) > cost.predict([cost.CallFeatures(f)], coef)
    copy = cost.call_features(KernelInfo(Kind.ELEMENTWISE, 0, None, ["copy_rows"]), 768, lean=False).values
    assert copy["copy_byte"] == 768 and copy["call"] == 0 and copy["out_byte"] == 0


@pytest.mark.slow     # ~50-90 s of planning (about 30 lowerings); test_budget keeps the cost-ordered search in the default run
def test_min_finds_a_plan_under_the_aim_within_the_instruction_bound(tmp_path, monkeypatch):
    """Planning only (no C compiled), the whole input in RAM as TFLM holds it (streaming it is
    tests/test_stream_input.py's): `--patches min` on the wake-word network chooses a plan whose
    static RAM and arena leave 1 KB of 37,600 B for the stack and whose predicted instructions, with
    the model's error, are within 1.15x the plain plan's. It tried one-row dw+pw tiles, and the plan of least peak RAM it tried
    (recomputed halos) was over the bound: the bound, not RAM alone, made the choice."""
    def compiled(*a, **k):
        raise AssertionError("the C was compiled")
    monkeypatch.setattr(CortexM, "build", compiled)
    source = load_model("mobilenet_v1", ModelOptions(**WAKE_WORD))
    rep = write_build(source, load_target(BOARD), tmp_path / "b",
                      BuildOptions(quant="int8", patches="min", compile=False, compare_unfused=False,
                                   stream_input=False), Progress(quiet=True))
    planning = rep["memory_planning"]
    chosen, tried, plain = planning["chosen"], planning["tried"], planning["predicted_plain_instructions"]
    # static RAM and arena (exact before compiling: the linked firmware's) leave at least 1 KB of the
    # aim to the stack (measured 0.8 KB on the board by the slow test; the estimate allows 1 KB plus
    # the kernels' stack arrays, so `peak_ram_estimate` errs a few hundred bytes high)
    assert chosen["static_ram_estimate"] + chosen["arena_bytes"] + 1024 <= AIM_BYTES, chosen
    assert chosen["predicted_ratio"] * (1 + planning["model_error"]) <= AIM_INSTRUCTIONS, chosen
    assert abs(chosen["predicted_instructions"] / plain - chosen["predicted_ratio"]) < 1e-3
    assert tried[0]["patch"] is None and tried[0]["predicted_ratio"] == 1.0
    assert all(p["predicted_instructions"] for p in tried)
    assert any(p["dwpw_rows"] == 1 for p in tried) and any(p["dwpw_rows"] is None and p["patch"] for p in tried)
    # plans of less peak RAM were tried and left out: their predictions are over the bound
    smaller = [p for p in tried if p["peak_ram_estimate"] < chosen["peak_ram_estimate"]]
    assert smaller and all(p["predicted_floor"] > chosen["predicted_instructions"] for p in smaller), smaller
    # kept only where RAM peaks: not every kernel lean, not every fused kernel in one-row tiles
    kernels = len({c["name"] for c in rep["calls"]})
    assert chosen["lean_kernels"] < kernels
    if chosen["dwpw_rows"]:
        assert chosen["dwpw_rows_kernels"] < sum(1 for n in {c["name"] for c in rep["calls"]} if "dwpw" in n)


@pytest.mark.slow
def test_min_plan_measured_on_the_board_against_the_plain_plan(tmp_path):
    """The plan `--patches min` chooses for the wake-word network, built and run on the emulated
    stm32f746g-disco beside the plain plan, in this test: measured peak RAM (static RAM of the
    linked firmware + stack used) <= 37,600 B, emulator instructions per inference <= 1.15x the
    plain plan's, the prediction within the model's stated error of the measured ratio, and the
    same int8 bytes as the host build and the kernel graph on TVM's VM."""
    source = load_model("mobilenet_v1", ModelOptions(**WAKE_WORD))
    target = load_target(BOARD)
    runs = {}
    for name, patches in (("plain", "off"), ("min", "min")):
        out = tmp_path / name
        rep = write_build(source, target, out, BuildOptions(quant="int8", patches=patches, compare_unfused=False, stream_input=False),
                          Progress(quiet=True))
        res = run_test(out, samples=2)
        assert res["passed"], res["failures"]
        assert res["host_int8"]["samples_differing"] == 0, res["host_int8"]
        runs[name] = (rep, res)
    rep, res = runs["min"]
    plain = runs["plain"][1]["instructions_per_inference"]
    peak = rep["ram_bytes"] + res["stack_used_bytes"]
    ratio = res["instructions_per_inference"] / plain
    assert rep["patch_plan"] is not None and peak <= AIM_BYTES, (peak, rep["memory_planning"]["chosen"])
    assert ratio <= AIM_INSTRUCTIONS, (ratio, rep["memory_planning"]["chosen"])
    predicted = rep["memory_planning"]["chosen"]["predicted_ratio"]
    assert abs(predicted / ratio - 1) <= rep["memory_planning"]["model_error"] + 0.01, (predicted, ratio)
    assert res["kernel_graph"] == {"samples_differing": 0, "max_difference_steps": 0}, res["kernel_graph"]
