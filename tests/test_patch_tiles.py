"""2-D patch tiles (`--patches K:RxC`, ir/patches.py): each row band of a patch stage cut into
column tiles, the halo rows and columns recomputed; the same results as the whole-tensor build
(int8: the same bytes) on the host and on a board, a memory plan that replays clean, clear errors."""

import json

import numpy as np
import pytest

from edgecompile.compiler import BuildOptions, Progress, compile_model
from edgecompile.ir.frontend import ModelOptions, load_model
from edgecompile.targets import load_target
from helpers import board_outputs, random_input, run_cli
from test_patches import _assert_int8_depends_on_input, _assert_same_results, _build, _int8_inputs

# family: (model options, window layers at most, rows per band, column tiles). At 36x36 both
# stages end 9x9 (MobileNet V2's after its first residual add): 4 tiles of 2, 2, 2, 3 columns a
# band; the first and last tile of a band get the layers' padding on their left / right side,
# the first and last band on top / bottom, the inner tiles none. int8 calibrates on 8 inputs.
TILES = {
    "mobilenet_v1": (dict(width_mult=0.25, resolution=36, num_classes=10), 5, 3, 4),
    "mobilenet_v2": (dict(width_mult=0.35, resolution=36, num_classes=10), 9, 4, 4),
}
CALIBRATION = dict(calibration_samples=8)


def _widths(plan):
    return [b - a for a, b in plan["band_cols"]]


@pytest.mark.parametrize("family,quant", [
    ("mobilenet_v1", "int8"), pytest.param("mobilenet_v2", "int8", marks=pytest.mark.slow),
    pytest.param("mobilenet_v1", "fp32", marks=pytest.mark.slow),
    pytest.param("mobilenet_v2", "fp32", marks=pytest.mark.slow),
])
def test_tiled_matches_plain_on_host(tmp_path, family, quant):
    opts, layers, rows, cols = TILES[family]
    source = load_model(family, ModelOptions(**opts))
    tiled = _build(source, tmp_path / "tiled", quant=quant, patch=(layers, rows, "recomputed", cols),
                   stream_input=quant == "int8", **CALIBRATION)
    plain = _build(source, tmp_path / "plain", quant=quant, **CALIBRATION)
    plan = tiled["patch_plan"]
    width = plan["stage_output_shape"][2]
    assert plan["cols"] == cols and plan["tiles"] == plan["bands"] * cols and plan["bands"] > 2
    assert width % cols and sum(_widths(plan)) == width and max(_widths(plan)) - min(_widths(plan)) == 1
    assert plan["stage_output_shape"][1] % rows == 0 if family == "mobilenet_v1" else plan["band_rows"][-1] == [8, 9]
    assert plan["extra_macs"] > 0 and tiled["macs"] == plain["macs"] + plan["extra_macs"]
    assert plan["input_streamed"] == (quant == "int8")
    _assert_same_results(source, quant, plain, tmp_path / "tiled", tmp_path / "plain")


@pytest.mark.slow
def test_tiled_int8_bytes_on_the_board(tmp_path):
    """Tiled and plain firmware on the emulated Cortex-M7 board (stm32f746g-disco's budget, input
    streamed): the same output bytes; the tiles' kernels of different widths get their own
    weight panels."""
    opts, layers, rows, cols = TILES["mobilenet_v1"]
    source = load_model("mobilenet_v1", ModelOptions(**opts))
    outs = []
    for name, patch in (("tiled", (layers, rows, "recomputed", cols)), ("plain", None)):
        rep = _build(source, tmp_path / name, target="stm32f746g-disco", quant="int8", patch=patch, **CALIBRATION)
        xs = _int8_inputs(rep, source.inputs[0].shape, range(4))
        outs.append(board_outputs("stm32f746g-disco", tmp_path / name, rep, xs, timeout=60, dtype="int8"))
        if patch:
            assert rep["patch_plan"]["cols"] == cols and rep["patch_plan"]["input_streamed"]
    _assert_int8_depends_on_input(outs[1])
    for got, ref in zip(*outs):
        assert got.tobytes() == ref.tobytes()


# ----------------------------------------------------------------------------- the memory plan


@pytest.mark.parametrize("family,stream", [("mobilenet_v1", True), pytest.param("mobilenet_v2", False, marks=pytest.mark.slow)])
def test_byte_replay_of_tiled_plans_finds_no_clobbered_read(family, stream):
    """The tiles' buffers (the band's input rows, each tile's column copy and layers, the column
    tiles put side by side into the stage output) in the board's arena: no two live buffers
    overlap beyond what an in-place pair allows, and every read, replayed byte by byte, finds
    the bytes its producer wrote. The tiles' kernels of different widths read their own weight
    panels where the family tiles them differently."""
    from edgecompile.codegen.memory import replay_plan

    opts, layers, rows, cols = TILES[family]
    c = compile_model(load_model(family, ModelOptions(**opts)), load_target("stm32f746g-disco"),
                      BuildOptions(quant="int8", patch=(layers, rows, "recomputed", cols), compare_unfused=False,
                                   stream_input=stream, **CALIBRATION), Progress(quiet=True))
    infos = [c.kernel_infos[x["name"]] for x in c.calls]
    assert c.patch_plan.cols == cols and c.patch_plan.input_streamed == stream
    # every tile's kernels, with the widths of its column window (the first layer's: 2 or 3 output
    # columns at stride 4 plus the halo)
    assert len(c.calls) > c.patch_plan.tiles * 2
    assert c.plan.overlaps() == []
    assert replay_plan(c.program, c.plan, infos) == []


# ----------------------------------------------------------------------------- the command line


@pytest.mark.slow
def test_inspect_shows_rows_by_columns_and_the_peak_before_and_after(tmp_path):
    """`inspect --target` (and report.json's patch_plan, the same record): rows x columns, the
    MACs recomputed, the arena and estimated peak RAM of the plain plan and of the tiled one."""
    from edgecompile.measure.inspection import format_inspection

    opts, layers, rows, cols = TILES["mobilenet_v2"]     # its peak is inside the stage: the tiles lower it
    model = ["mobilenet_v2", "--width-mult", "0.35", "--resolution", "36", "--num-classes", "10", "--quant", "fp32",
             "--target", "mps2-an386", "--patches", f"{layers}:{rows}x{cols}"]
    info = json.loads(run_cli("inspect", *model, "--json", check=True).stdout)
    pp = info["memory_plan"]["patch_plan"]
    assert (pp["rows"], pp["cols"], pp["tiles"]) == (rows, cols, pp["bands"] * cols) and pp["extra_macs"] > 0
    assert pp["arena_bytes_before"] > pp["arena_bytes_after"] > 0
    assert pp["peak_ram_estimate_before"] > pp["peak_ram_estimate_after"] > 0
    text = format_inspection(info)
    assert f"2-D tiles ({pp['bands']} row bands of {rows} rows x {cols} column tiles of 2-3 columns)" in text, text
    assert (f"arena {pp['arena_bytes_before']:,} B plain -> {pp['arena_bytes_after']:,} B, peak RAM about "
            f"{pp['peak_ram_estimate_before']:,} -> {pp['peak_ram_estimate_after']:,} B") in text, text


@pytest.mark.parametrize("spec,fragment", [
    ("5:2x40", "40 column tiles, but the stage output"),        # wider than the 9-column stage output
    ("5:2x3:cached", "2-D tiles (xCOLS) recompute their halos"),
    ("5:2x0", "--patches must be off, auto, min or LAYERS:ROWS[xCOLS]"),
    ("5:2x", "--patches must be off, auto, min or LAYERS:ROWS[xCOLS]"),
])
def test_bad_tile_specs_are_refused_naming_them(tmp_path, spec, fragment):
    out = tmp_path / "out"
    proc = run_cli("build", "mobilenet_v1", "--width-mult", "0.25", "--resolution", "36", "--num-classes", "10",
                   "--target", "host", "--quant", "fp32", "--patches", spec, "--out", str(out))
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode != 0 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert fragment in errors[0] and not out.exists(), errors[0]
    if "stage output" in fragment:
        assert "lv19 9x9x32 has only 9 columns" in errors[0]
