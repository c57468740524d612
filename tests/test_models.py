"""The zoo matches the papers' reference configurations (parameter and MAC counts)."""

import pytest
import torch

from edgecompile.ir.frontend import ModelOptions, load_model
from edgecompile.measure.inspection import inspect_model
from edgecompile.models import ModelOptionError, ZOO, build_model
from edgecompile.models.efficientnet import compound_coefficients
from helpers import slow_params

# Parameter counts at 1000 classes of the reference implementations (torchvision / Keras Xception).
REFERENCE_PARAMS = {
    "mobilenet_v1": 4_231_976,
    "mobilenet_v2": 3_504_872,
    "shufflenet_v2": 2_278_604,
    "squeezenet1_0": 1_248_424,
    "squeezenet1_1": 1_235_496,
    "xception": 22_855_952,
    "efficientnet_b0": 5_288_548,
    "efficientnet_b1": 7_794_184,
    "efficientnet_b2": 9_109_994,
    "efficientnet_b3": 12_233_232,
    "efficientnet_b4": 19_341_616,
    "efficientnet_b5": 30_389_784,
    "efficientnet_b6": 43_040_704,
    "efficientnet_b7": 66_347_960,
}


@pytest.mark.parametrize("name", slow_params(sorted(REFERENCE_PARAMS), ("efficientnet_b6", "efficientnet_b7")))   # B6/B7: 12-22 s on CI
def test_parameter_count_matches_reference(name):
    model, _ = build_model(name)
    assert sum(p.numel() for p in model.parameters()) == REFERENCE_PARAMS[name]


# MobileNet V1 paper, Tables 6 and 7: MACs (millions) by width multiplier at 224, and by resolution.
@pytest.mark.parametrize("alpha,res,mmacs,mparams", [
    (1.0, 224, 569, 4.2), (0.75, 224, 325, 2.6), (0.5, 224, 149, 1.3), (0.25, 224, 41, 0.5),
    (1.0, 192, 418, 4.2), (1.0, 160, 290, 4.2), (1.0, 128, 186, 4.2),
])
def test_mobilenet_v1_paper_tables(alpha, res, mmacs, mparams):
    info = inspect_model(load_model("mobilenet_v1", ModelOptions(width_mult=alpha, resolution=res)))
    assert info["macs"] / 1e6 == pytest.approx(mmacs, rel=0.02)
    # the paper's counts exclude BatchNorm
    convfc = info["params"] - info["by_kind"]["other"]["params"]
    assert convfc / 1e6 == pytest.approx(mparams, abs=0.06)


def test_mobilenet_v1_table2_breakdown():
    info = inspect_model(load_model("mobilenet_v1"))
    k = info["by_kind"]
    assert k["conv_pw"]["macs_share"] == pytest.approx(0.9486, abs=0.001)
    assert k["conv_dw"]["macs_share"] == pytest.approx(0.0306, abs=0.001)
    assert k["fc"]["macs_share"] == pytest.approx(0.0018, abs=0.0005)


@pytest.mark.parametrize("name,mmacs", [
    ("mobilenet_v2", 300), ("efficientnet_b0", 390), ("shufflenet_v2", 146), ("shufflenet_v1", 140),
])
def test_published_mac_counts(name, mmacs):
    info = inspect_model(load_model(name))
    assert info["macs"] / 1e6 == pytest.approx(mmacs, rel=0.06)


def test_shufflenet_v1_groups_keep_cost_budget():
    # Table 1 of the ShuffleNet paper: channel counts are chosen so every g costs ~140 MFLOPs.
    for g in (1, 2, 3, 4, 8):
        info = inspect_model(load_model("shufflenet_v1", ModelOptions(groups=g)))
        assert info["macs"] / 1e6 == pytest.approx(140, rel=0.1), g


def test_efficientnet_compound_scaling_coefficients():
    depth, width, res = compound_coefficients(1)
    assert (depth, width, res) == (1.2, 1.1, 1.15)
    # the released B-variants follow the rule: more depth than width at each step
    from edgecompile.models.efficientnet import VARIANTS

    for v in range(1, 8):
        w, d, r, _ = VARIANTS[v]
        assert d >= w and r > VARIANTS[v - 1][2]


def test_seed_is_deterministic_and_matters():
    a, _ = build_model("mobilenet_v1", width_mult=0.25, seed=1)
    b, _ = build_model("mobilenet_v1", width_mult=0.25, seed=1)
    c, _ = build_model("mobilenet_v1", width_mult=0.25, seed=2)
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_weights_file_round_trip(tmp_path):
    a, _ = build_model("mobilenet_v1", width_mult=0.25, seed=5, num_classes=10)
    torch.save(a.state_dict(), tmp_path / "w.pt")
    b, _ = build_model("mobilenet_v1", width_mult=0.25, seed=6, num_classes=10, weights=str(tmp_path / "w.pt"))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("kwargs,msg", [
    ({"name": "xception", "resolution": 6}, r"xception must be in 7\.\.1024"),
    ({"name": "squeezenet1_0", "resolution": 20}, r"smallest input is 21x21"),
    ({"name": "mobilenet_v1", "resolution": 1025}, r"--resolution"),
    ({"name": "mobilenet_v1", "width_mult": -1.0}, "--width-mult"),
    ({"name": "squeezenet1_0", "width_mult": 0.5}, "does not take --width-mult"),
    ({"name": "shufflenet_v2", "width_mult": 0.7}, "must be one of"),
    ({"name": "shufflenet_v1", "groups": 5}, "groups"),
    ({"name": "mobilenet_v1", "num_classes": 0}, "--num-classes"),
])
def test_option_out_of_range(kwargs, msg):
    name = kwargs.pop("name")
    with pytest.raises(ModelOptionError, match=msg):
        build_model(name, **kwargs)


def test_zoo_lists_every_family():
    assert {"mobilenet_v1", "mobilenet_v2", "shufflenet_v1", "shufflenet_v2", "squeezenet1_0",
            "squeezenet1_1", "xception"} <= set(ZOO)
    assert all(f"efficientnet_b{i}" in ZOO for i in range(8))


# The sizes the test suite builds (tests/test_build_zoo.py, test_device.py, test_fusion.py, test_quant.py)
SPREAD_CASES = [
    ("mobilenet_v1", dict(width_mult=0.25, resolution=32)),
    ("mobilenet_v1", dict(width_mult=0.25, resolution=64)),
    ("mobilenet_v1", dict(width_mult=0.25, resolution=96)),
    ("mobilenet_v2", dict(width_mult=0.35, resolution=64)),
    ("mobilenet_v2", dict(width_mult=1.0, resolution=224)),
    ("shufflenet_v1", dict(groups=3, width_mult=0.5, resolution=64)),
    ("shufflenet_v2", dict(width_mult=0.5, resolution=64)),
    ("squeezenet1_0", dict(resolution=64)),
    ("squeezenet1_1", dict(resolution=64)),
    ("xception", dict(resolution=64)),
    ("efficientnet_b0", dict(resolution=32)),
    ("efficientnet_b0", dict(resolution=64)),
    ("efficientnet_b3", dict(resolution=64)),
    ("efficientnet_b7", dict(resolution=64)),
]


@pytest.mark.parametrize("name,opts", SPREAD_CASES, ids=[f"{n}-{o['resolution']}" for n, o in SPREAD_CASES])
def test_random_weights_keep_the_output_dependent_on_the_input(name, opts):
    """Seeded random weights whose outputs differ between inputs by at least 10% of their
    magnitude: without it every comparison with PyTorch would check only the last layers."""
    model, shape = build_model(name, num_classes=10, **opts)
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        y = torch.stack([model(torch.randn(shape, generator=g))[0] for _ in range(4)])
    spread = float((y.max(0).values - y.min(0).values).max())
    assert spread >= 0.1 * float(y.abs().max()), (spread, float(y.abs().max()))
    assert torch.isfinite(y).all() and float(y.abs().max()) < 1e3


def test_statistics_are_the_same_bits_with_any_thread_count():
    a, _ = build_model("mobilenet_v2", width_mult=0.35, resolution=64, num_classes=10, seed=3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if threads > 1 else 2)
    try:
        b, _ = build_model("mobilenet_v2", width_mult=0.35, resolution=64, num_classes=10, seed=3)
    finally:
        torch.set_num_threads(threads)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", [n for n in ZOO if not n.startswith("efficientnet_b") or n == "efficientnet_b0"])
def test_min_resolution_is_the_smallest_input_the_network_runs_on(name):
    """The zoo's minimum is the network's own: a forward pass runs at it and fails one pixel
    below (PyTorch's error, not ours); sizes above it that are no multiple of 32 run too."""
    entry = ZOO[name]
    model = entry.factory(num_classes=10, **entry.options).eval()
    low = entry.min_resolution
    with torch.no_grad():
        for res in (low, low + 1, 71, 80, 100, 112, 144):
            assert model(torch.zeros(1, 3, res, res)).shape == (1, 10)
        if low > 1:
            with pytest.raises(RuntimeError):
                model(torch.zeros(1, 3, low - 1, low - 1))
    build_model(name, num_classes=10, resolution=low)
    with pytest.raises(ModelOptionError, match=f"smallest input is {low}x{low}"):
        build_model(name, num_classes=10, resolution=low - 1)


@pytest.mark.parametrize("name,opts", [("mobilenet_v2", dict(width_mult=0.35, resolution=80)),
                                       ("mobilenet_v1", dict(width_mult=0.25, resolution=71))])
def test_build_at_a_resolution_no_multiple_of_32(tmp_path, name, opts):
    """Through the compiler on this machine: odd feature-map sizes all the way down, fp32 within
    1e-4 of the output spread of PyTorch's."""
    from edgecompile.compiler import BuildOptions, Progress, write_build
    from edgecompile.platforms.host import HostModel
    from edgecompile.targets import load_target
    from helpers import compare_with_reference

    source = load_model(name, ModelOptions(num_classes=10, **opts))
    write_build(source, load_target("host"), tmp_path / "b", BuildOptions(compare_unfused=False), Progress(quiet=True))
    model = HostModel(tmp_path / "b")
    compare_with_reference(lambda x: model.run(x)[0], lambda x: source.reference(x)[0], source.inputs[0].shape, 1e-4)
