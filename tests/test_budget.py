"""Budget-driven memory planning (compiler._plan_memory): a build that does not fit the target's
RAM or --ram-budget tries patch stages and lean windows before refusing; a model that fits in no
plan is refused from the graph and the memory plan, before any C is compiled, with the numbers."""

import pytest

from edgecompile import compiler
from edgecompile.compiler import BuildOptions, Progress, write_build
from edgecompile.errors import FitError
from edgecompile.ir.frontend import ModelOptions, load_model
from edgecompile.measure.accuracy import run_test
from edgecompile.platforms.cortex_m import CortexM
from edgecompile.targets import load_target

WAKE_WORD = dict(width_mult=0.25, resolution=96, num_classes=2)
BOARD = "stm32f746g-disco"


def _no_c_compile(monkeypatch):
    """Make compiling C (the firmware build) or calibrating a failure: a refusal must come first."""
    def compiled(*a, **k):
        raise AssertionError("the C was compiled before the refusal")
    monkeypatch.setattr(CortexM, "build", compiled)


def _folded_weights(module, biases: bool = True) -> int:
    """Weights after BatchNorm folding, one int8 byte each: convolution and linear weights and
    biases (a folded BatchNorm gives a bias-free convolution one per output channel)."""
    import torch

    n = 0
    for m in module.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            n += m.weight.numel()
            if biases:
                n += m.bias.numel() if m.bias is not None else m.weight.shape[0]
    return n


def test_weights_over_flash_refused_before_calibration(tmp_path, monkeypatch):
    """MobileNet V1 1.0 has 4.2 M weights: over the 1 MB flash of the board in int8. Refused from
    the graph's constants, before calibration and lowering, with the region and its numbers."""
    _no_c_compile(monkeypatch)

    def calibrated(*a, **k):
        raise AssertionError("calibrated before the refusal")
    monkeypatch.setattr(compiler, "calibration_inputs", calibrated)
    source = load_model("mobilenet_v1", ModelOptions(width_mult=1.0, resolution=96, num_classes=2))
    with pytest.raises(FitError) as e:
        write_build(source, load_target(BOARD), tmp_path / "b", BuildOptions(quant="int8"), Progress(quiet=True))
    msg = str(e.value)
    assert f"does not fit {BOARD}" in msg and f"FLASH needs {_folded_weights(source.torch_module):,} B" in msg, msg
    assert "budget 1,048,576 B" in msg, msg
    assert "\n" not in msg and not (tmp_path / "b" / "model.c").exists()


def test_ram_budget_nothing_fits_refused_before_compiling(tmp_path, monkeypatch):
    """20 KB is below every plan of the wake-word network (its input alone is 27 KB): refused after
    planning, before the C is compiled, naming the smallest plan, its peak call and the budget."""
    _no_c_compile(monkeypatch)
    source = load_model("mobilenet_v1", ModelOptions(**WAKE_WORD))
    with pytest.raises(FitError) as e:
        write_build(source, load_target(BOARD), tmp_path / "b",
                    BuildOptions(quant="int8", ram_budget=20_000, compare_unfused=False), Progress(quiet=True))
    msg = str(e.value)
    assert "--ram-budget 20,000 B (over by" in msg and "smallest plan tried:" in msg, msg
    assert "peaking at call" in msg and "peak RAM about" in msg, msg
    # the buffers live at the peak call, largest first, with shape, dtype and bytes
    assert " live there" in msg, msg
    assert " uint8 " in msg or " int8 " in msg or " int32 " in msg, msg
    least = int(msg.split("every patch stage needs an arena of at least ")[1].split(" B")[0].replace(",", ""))
    # the input is streamed (ir/stream.py): the least bound holds the first band's input rows, not
    # the whole input (96 x 96 x 3 B); every plan tried still peaks over 20 KB
    assert 96 * 3 <= least < 96 * 96 * 3
    assert not (tmp_path / "b" / "model.c").exists()


def test_plan_off_under_a_budget_is_refused(tmp_path, monkeypatch):
    """--patches off keeps the plain plan: over the budget it is refused, not silently patched."""
    _no_c_compile(monkeypatch)
    source = load_model("mobilenet_v1", ModelOptions(**WAKE_WORD))
    with pytest.raises(FitError, match=r"smallest plan tried: no patches"):
        write_build(source, load_target(BOARD), tmp_path / "b",
                    BuildOptions(quant="int8", patches="off", ram_budget=45_000, compare_unfused=False),
                    Progress(quiet=True))


def test_budget_picks_patches_and_the_board_stays_under_it(tmp_path):
    """The wake-word network needs about 66 KB of peak RAM plain; under a 45,000 B budget the
    planner picks a patch stage (the whole input in RAM: tests/test_stream_input.py streams it), the firmware passes `test` on the emulated board, and what the
    device measures (static RAM of the linked firmware + stack used) stays under the budget.
    The static RAM estimated before compiling is the linked firmware's."""
    source = load_model("mobilenet_v1", ModelOptions(**WAKE_WORD))
    budget = 45_000
    out = tmp_path / "b"
    rep = write_build(source, load_target(BOARD), out,
                      BuildOptions(quant="int8", ram_budget=budget, compare_unfused=False, stream_input=False),
                      Progress(quiet=True))
    planning = rep["memory_planning"]
    chosen = planning["chosen"]
    assert chosen["patch"] is not None and rep["patch_plan"]["bands"] > 1
    assert planning["tried"][0]["patch"] is None and planning["tried"][0]["peak_ram_estimate"] > budget
    assert chosen["peak_ram_estimate"] <= budget
    pp = rep["patch_plan"]
    assert pp["peak_ram_estimate_before"] > budget >= pp["peak_ram_estimate_after"]
    assert pp["arena_bytes_after"] == rep["arena_bytes"] < pp["arena_bytes_before"]
    assert rep["ram_bytes"] - rep["arena_bytes"] == chosen["static_ram_estimate"]
    # lean windows only where RAM peaks (the band kernels), not in the whole network
    assert chosen["lean_windows"] and 0 < chosen["lean_kernels"] < len({c["name"] for c in rep["calls"]})
    res = run_test(out, samples=3)
    assert res["passed"], res["failures"]
    # the patched device's bytes against the whole-tensor kernel graph on TVM's VM
    assert res["kernel_graph"] == {"samples_differing": 0, "max_difference_steps": 0}, res["kernel_graph"]
    measured = rep["ram_bytes"] + res["stack_used_bytes"]
    assert measured <= budget, f"measured peak RAM {measured:,} B over the budget {budget:,} B"


def test_xception_int8_on_mps2_an386_refused_in_seconds(tmp_path, monkeypatch):
    """Issue 13's case: Xception int8 was refused by the linker after 589 s. Its 20.8 M weights are
    over the board's 16 MB PSRAM (the region that holds them): refused from the graph, before
    calibration and the long lowering."""
    _no_c_compile(monkeypatch)

    def calibrated(*a, **k):
        raise AssertionError("calibrated before the refusal")
    monkeypatch.setattr(compiler, "calibration_inputs", calibrated)
    source = load_model("xception", ModelOptions(resolution=71, num_classes=10))
    with pytest.raises(FitError) as e:
        write_build(source, load_target("mps2-an386"), tmp_path / "b", BuildOptions(quant="int8"), Progress(quiet=True))
    msg = str(e.value)
    assert "PSRAM needs " in msg and "budget 16,777,216 B" in msg, msg
    needs = int(msg.split("PSRAM needs ")[1].split(" B")[0].replace(",", ""))
    # between the weights without biases and with a folded bias for every convolution (a depthwise
    # convolution straight into its pointwise one has no BatchNorm to fold)
    assert _folded_weights(source.torch_module, biases=False) <= needs <= _folded_weights(source.torch_module), msg


@pytest.mark.slow
def test_model_that_fits_only_with_patches_passes_on_the_board(tmp_path, monkeypatch):
    """MobileNet V1 0.25 at 256x256: its arena is about 400 KB without patches (lean windows
    included), over the board's 320 KB of RAM; the default build (`--patches auto`, no budget)
    finds a patch stage that fits and the firmware passes `test` on the emulated board. The same
    model with --patches off is refused before its C is compiled, naming the RAM region."""
    source = load_model("mobilenet_v1", ModelOptions(width_mult=0.25, resolution=256, num_classes=2))
    target = load_target(BOARD)
    out = tmp_path / "b"
    rep = write_build(source, target, out, BuildOptions(quant="int8", compare_unfused=False), Progress(quiet=True))
    planning = rep["memory_planning"]
    layout, name = target.arena_layouts()[-1]     # DTCM + SRAM as one region: the board's 320 KB
    ram = next(r for r in layout.memory if r.name == name)
    assert all(p["peak_ram_estimate"] > ram.size for p in planning["tried"] if p["patch"] is None)
    assert planning["chosen"]["patch"] is not None and rep["patch_plan"]["bands"] > 1
    res = run_test(out, samples=3)
    assert res["passed"], res["failures"]
    assert rep["ram_bytes"] + res["stack_used_bytes"] <= ram.size
    _no_c_compile(monkeypatch)
    with pytest.raises(FitError, match=rf"{ram.name} needs [\d,]+ B, budget {ram.size:,} B \(ram"):
        write_build(source, target, tmp_path / "off", BuildOptions(quant="int8", patches="off", compare_unfused=False),
                    Progress(quiet=True))


def test_a_budget_under_every_cached_plan_still_finds_a_recomputing_one(tmp_path, monkeypatch):
    """37,600 B (issue 13's aim for the wake-word network) is under every cached-halo plan (their
    halo buffers stay live between bands) but over the 4-layer, 2-row plan that recomputes its
    halo. The cached plans cost fewer MACs, so they come first in `auto`'s cost order and once
    filled all its tries: the search must go on by arena bound and find the plan that fits.
    The whole input in RAM (streamed, its 27 KB leave room for a cached plan). Planned without
    compiling C."""
    _no_c_compile(monkeypatch)
    source = load_model("mobilenet_v1", ModelOptions(**WAKE_WORD))
    budget = 37_600
    rep = write_build(source, load_target(BOARD), tmp_path / "b",
                      BuildOptions(quant="int8", ram_budget=budget, compile=False, compare_unfused=False,
                                   stream_input=False), Progress(quiet=True))
    planning = rep["memory_planning"]
    chosen, tried = planning["chosen"], planning["tried"]
    assert planning["mode"] == "auto" and chosen["peak_ram_estimate"] <= budget
    assert chosen["halo"] == "recomputed" and chosen["extra_macs"] > 0
    cached = [p for p in tried if p["halo"] == "cached"]
    assert len(cached) >= compiler.MAX_PLANS_TRIED // 2 and all(p["peak_ram_estimate"] > budget for p in cached)
    fitting = [p for p in tried if p["peak_ram_estimate"] is not None and p["peak_ram_estimate"] <= budget]
    # the fitting plan of least predicted instructions (its lean windows trimmed afterwards)
    assert chosen["predicted_floor"] == min(p["predicted_floor"] for p in fitting)
    assert chosen["predicted_instructions"] >= chosen["predicted_floor"]
