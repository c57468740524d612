"""The benchmark scripts' own arithmetic: benchmarks/zoo.py's tables (RESULTS.md: each ratio from one
process, the aims counted) and benchmarks/neon_int8.py's int8 instruction bound."""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _script(name):
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"{name}_under_test", BENCH / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def zoo():
    return _script("zoo")


def _row(label, ours, untuned, peers, child=None):
    res = {"edgecompile": {"median_ms": ours}, "edgecompile-untuned": {"median_ms": untuned}}
    res.update({p: {"median_ms": ms} for p, ms in peers.items()})
    for p, (ms, ours_there) in (child or {}).items():
        res[p] = {"median_ms": ms, "edgecompile_ms_in_child": ours_there}
    return {"label": label, "results": res, "macs": 1e6, "weights_bytes": 1000, "arena_bytes": 1000}


def test_a_peer_in_a_child_process_is_rated_against_ours_timed_there(zoo):
    # in this process: ours 0.12 ms, untuned 0.09, onnxruntime 0.27; in the child: ExecuTorch 0.065 ms
    # beside ours at 0.042 ms. Its milliseconds against ours here would say 1.85x; measured, ours is
    # 0.042 / 0.065 = 0.646x of it.
    res = _row("n", 0.12, 0.09, {"onnxruntime": 0.27}, {"executorch": (0.065, 0.042)})["results"]
    assert zoo.to_fastest(res, "edgecompile") == pytest.approx(0.042 / 0.065)
    assert zoo.to_fastest(res, "edgecompile-untuned") == pytest.approx(0.09 / 0.12 * 0.042 / 0.065)
    # the slower in-process peer does not set the ratio
    res["onnxruntime"]["median_ms"] = 0.06
    assert zoo.to_fastest(res, "edgecompile") == pytest.approx(0.12 / 0.06)


def test_results_table_counts_the_aims_per_row(zoo, tmp_path):
    rows = [_row("fast", 1.0, 1.1, {"onnxruntime": 1.2, "litert": 1.25}),          # tuned 0.83x, untuned 0.92x
            _row("tie", 1.02, 1.2, {"onnxruntime": 1.0}),                           # tuned 1.02x, untuned 1.20x
            _row("child", 2.0, 2.0, {"onnxruntime": 3.0}, {"executorch": (1.0, 1.5)})]  # 1.5x ExecuTorch
    out = tmp_path / "R.md"
    zoo.write_markdown(rows, {"gflops": 100.0, "bandwidth_gbs": 20.0, "vector_lanes": 16}, [], [], [], out, "test cpu")
    text = out.read_text()
    lines = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ") and "x |" in line}
    assert "| 0.83x | 0.92x | untuned met, tuned met |" in lines["fast"]
    assert "| 1.02x | 1.20x | untuned not met, tuned not met |" in lines["tie"]
    assert "| 1.50x | 1.50x | untuned not met, tuned not met |" in lines["child"]
    assert "untuned <= 1.15x (met by 1 of 3), tuned <= 1.0x (met by 1 of 3)" in text
    assert "Machine: test cpu" in text


def test_int8_bound_counts_each_layer_kind_at_its_widest_exact_form(tmp_path):
    """A 3x3/2 convolution (3 -> 8 channels, 16x16 -> 8x8), a 3x3 depthwise one, a 1x1 (8 -> 16), a
    global pool and a dense layer (16 -> 10), written as ONNX by hand."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def w(name, *shape):
        return numpy_helper.from_array(np.zeros(shape, np.float32), name)

    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "w2"], ["b"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=8),
             helper.make_node("Conv", ["b", "w3"], ["c"], kernel_shape=[1, 1]),
             helper.make_node("GlobalAveragePool", ["c"], ["d"]),
             helper.make_node("Flatten", ["d"], ["e"]),
             helper.make_node("Gemm", ["e", "w4"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
                              [w("w1", 8, 3, 3, 3), w("w2", 8, 1, 3, 3), w("w3", 16, 8, 1, 1), w("w4", 10, 16)])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), str(path))
    bound = _script("neon_int8").mac_floor(path)
    assert bound["depthwise_macs"] == 8 * 8 * 8 * 9
    assert bound["other_macs"] == 8 * 8 * 8 * 27 + 8 * 8 * 16 * 8 + 16 * 10
    assert bound["outputs"] == 8 * 8 * 8 + 8 * 8 * 8 + 8 * 8 * 16 + 10
    assert bound["instructions"] == pytest.approx(4608 / 4 + 22176 * 3 / 16 + 2058 / 4)
