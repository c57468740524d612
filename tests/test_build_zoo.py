"""Every zoo family through the real pipeline (ONNX -> Relax -> TVM kernels -> C -> gcc), run
from the generated C and compared with PyTorch."""

import json

import numpy as np
import pytest

from edgecompile.platforms.host import HostModel

from helpers import assert_close, compare_with_reference, output_spread, random_input

# Reduced resolutions keep the suite fast; every block type of each family is still exercised.
FAMILIES = [
    ("mobilenet_v1", dict(width_mult=0.25, resolution=96, num_classes=10)),
    ("mobilenet_v2", dict(width_mult=0.35, resolution=64, num_classes=10)),
    ("shufflenet_v1", dict(groups=3, width_mult=0.5, resolution=64, num_classes=10)),
    ("shufflenet_v2", dict(width_mult=0.5, resolution=64, num_classes=10)),
    ("squeezenet1_0", dict(resolution=64, num_classes=10)),
    ("squeezenet1_1", dict(resolution=64, num_classes=10)),
    ("xception", dict(resolution=64, num_classes=10)),
    ("efficientnet_b0", dict(resolution=64, num_classes=10)),
]

# |C - PyTorch| <= REL x the spread of PyTorch's outputs over the test inputs (float32 rounding;
# the zoo's random initialisation keeps the outputs input-dependent, which compare_* asserts first)
REL = 1e-4


@pytest.mark.parametrize("name,opts", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_generated_c_matches_pytorch(build_cache, name, opts):
    source, out, report = build_cache(name, **opts)
    model = HostModel(out)
    compare_with_reference(lambda x: model.run(x)[0], lambda x: source.reference(x)[0], source.inputs[0].shape, REL)
    assert report["kernels"] == len(report["calls"]) > 0
    # without in-place overlaps no plan can beat the largest set of simultaneously live bytes
    if not any(c["in_place"] for c in report["calls"]):
        assert report["arena_bytes"] >= report["largest_live_set_bytes"] > 0
    assert report["arena_bytes"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnet_b3", "efficientnet_b7"])
def test_scaled_efficientnets(build_cache, name):
    """The deep compound-scaled networks (B7: 55 blocks) against PyTorch in float64. Float32
    rounding alone moves their outputs by more than REL x spread: on B7 at 64x64, PyTorch's own
    float32 output is 4.8e-3 from its float64 output (spread 40.5) and onnxruntime's is 7.1e-3, so
    the bound is twice PyTorch float32's own distance to float64 on the same input (at least REL x
    spread): a wrong kernel is off by the spread, not by rounding."""
    import copy

    import torch

    source, out, _ = build_cache(name, resolution=64, num_classes=10)
    model = HostModel(out)
    exact = copy.deepcopy(source.torch_module).double().eval()
    xs = [random_input(source.inputs[0].shape, s) for s in range(3)]
    refs = [source.reference(x)[0] for x in xs]
    spread = output_spread(refs)
    for x, ref in zip(xs, refs):
        with torch.no_grad():
            ref64 = exact(torch.from_numpy(x).double()).numpy()
        torch_rounding = float(np.abs(ref - ref64).max())
        got = model.run(x)[0]
        assert got.shape == ref64.shape
        assert_close(got, ref64, spread, max(REL, 2 * torch_rounding / spread))


def test_report_contents(build_cache):
    source, out, report = build_cache("mobilenet_v1", width_mult=0.25, resolution=96, num_classes=10)
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    for key in ("model", "target", "macs", "params", "weights_bytes", "arena_bytes", "kernels"):
        assert key in report
    assert report["model"] == "mobilenet_v1" and report["target"] == "host"
    for call in report["calls"]:
        assert {"name", "macs", "arena_offset", "arena_size"} <= set(call)
        assert call["name"].startswith("ec_")
    # the conv/fc MACs of the compiled graph are the model's MACs
    from edgecompile.measure.inspection import inspect_model

    assert report["macs"] == inspect_model(source)["macs"]
    # every conv/fc weight is in the C (BatchNorm folded away: fewer parameters than PyTorch)
    assert 0 < report["params"] < sum(p.numel() for p in source.torch_module.parameters())
    header = (out / "model.h").read_text()
    assert f"#define EC_ARENA_BYTES {report['arena_bytes']}" in header
    assert "ec_model_run(" in header
    for artifact in ("model.c", "weights.c", "libmodel.so", "runner"):
        assert (out / artifact).exists(), artifact


def test_no_tvm_runtime_and_no_malloc_in_generated_c(build_cache):
    _, out, _ = build_cache("mobilenet_v2", width_mult=0.35, resolution=64, num_classes=10)
    code = (out / "model.c").read_text()
    for forbidden in ("malloc", "TVMBackend", "DLTensor", "tvm/", "TVMFFI", "calloc", "free("):
        assert forbidden not in code, forbidden


def test_external_io_build_runs_from_caller_buffers(build_cache):
    source, out, report = build_cache("mobilenet_v1", external_io=True, width_mult=0.25, resolution=64,
                                      num_classes=10)
    source2, out2, report2 = build_cache("mobilenet_v1", width_mult=0.25, resolution=64, num_classes=10)
    assert report["arena_bytes"] <= report2["arena_bytes"] and report["external_io"]
    assert "#define EC_EXTERNAL_IO 1" in (out / "model.h").read_text()
    model = HostModel(out)
    compare_with_reference(lambda x: model.run(x)[0], lambda x: source.reference(x)[0], source.inputs[0].shape, REL)


def test_shufflenet_v1_convolutions_are_tiled(build_cache):
    """ShuffleNet V1's grouped 1x1 convolutions (31 of its kernel calls at 0.5/64) run as one GEMM
    per group, not the generic untiled loop nest."""
    _, _, report = build_cache("shufflenet_v1", groups=3, width_mult=0.5, resolution=64, num_classes=10)
    convs = [c for c in report["calls"] if c["kind"].startswith("conv") or c["kind"] == "fc"]
    assert sum(c["kind"] == "conv_group" for c in convs) == 31
    assert all("untiled" not in c["schedule"] for c in convs), [(c["name"], c["schedule"]) for c in convs]
