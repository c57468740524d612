"""Child process of test_host_avx2_tiles: run with EDGECOMPILE_HOST_VECTOR=avx2 (the variant is
chosen when edgecompile.schedules.host is imported). Builds a small network whose pointwise GEMMs
cover the AVX2 model's cases, runs the C against PyTorch, prints one JSON line."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import has_gemm_tile, keep_input_dependence, output_spread, random_input  # noqa: E402

from edgecompile.compiler import BuildOptions, Progress, write_build  # noqa: E402
from edgecompile.ir.frontend import ModelOptions, _from_torch  # noqa: E402
from edgecompile.platforms.host import HostModel  # noqa: E402
from edgecompile.schedules import host  # noqa: E402
from edgecompile.schedules.rules import choose_tile, tile_candidates  # noqa: E402
from edgecompile.targets import load_target  # noqa: E402

SHAPE = (1, 32, 28, 28)
REL = 1e-4      # |C - PyTorch| <= REL x the spread of PyTorch's outputs (float32 rounding)
# (row width, output channels, reduction steps) of the network's float GEMMs
GEMMS = {"28-pixel rows, 32 -> 128": (28, 128, 32), "14-pixel rows, 128 -> 384": (14, 384, 128),
         "14-pixel rows, 384 -> 128": (14, 128, 384), "14-pixel rows, 128 -> 116": (14, 116, 128),
         "7-pixel rows, 128 -> 96": (7, 96, 128)}


def main(tmp: str) -> None:
    torch.manual_seed(27)
    net = nn.Sequential(
        nn.Conv2d(32, 128, 1), nn.ReLU(),                                                       # 28x28
        nn.Conv2d(128, 128, 3, stride=2, padding=1, groups=128), nn.ReLU(), nn.Conv2d(128, 384, 1), nn.ReLU(),  # 14x14
        nn.Conv2d(384, 128, 1), nn.ReLU(), nn.Conv2d(128, 116, 1), nn.ReLU(), nn.Conv2d(116, 128, 1), nn.ReLU(),
        nn.Conv2d(128, 128, 3, stride=2, padding=1, groups=128), nn.ReLU(), nn.Conv2d(128, 96, 1), nn.ReLU(),  # 7x7
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(96, 1000)).eval()                     # 1000 classes
    keep_input_dependence(net)
    source = _from_torch("host_avx2_tiles", net, SHAPE, ModelOptions(input_shape=SHAPE, seed=27))
    out = Path(tmp) / "b"
    write_build(source, load_target("host"), out, BuildOptions(compare_unfused=False), Progress(quiet=True))
    code = (out / "model.c").read_text()
    model = host.RULES.gemm_model
    tiles = {}
    for name, (w, c, k) in GEMMS.items():
        if host.RULES._ragged_run(c):       # a run over the map's pixels, blocked tiles of all the channels
            m, n = model.accumulators // 2, c
        else:
            m, n = tile_candidates(w, c, host.LANES, model.accumulators, 8, True, model, k, True)[0]
        tiles[f"{name}: {m}x{n}"] = has_gemm_tile(code, m, n)
    tiles["a 6 x 16 tile"] = has_gemm_tile(code, 6, 16)
    # ... over the 14 x 14 map's 196 pixels as one run (ragged pixel tiles: 32 x 6 + 4)
    tiles["116 channels over a run of 196 pixels: 196x116_p6"] = re.search(r"\bec_gemm_f32_196x116_p6_", code) is not None
    m, n = choose_tile(1, 1000, host.LANES, host.RULES.fc_acc, 1, True)
    tiles[f"classifier 96 -> 1000: {m}x{n}"] = (m, n) == (1, 40) and has_gemm_tile(code, m, n)
    runner = HostModel(out)
    xs = [random_input(SHAPE, s) for s in range(3)]
    refs = [source.reference(x)[0] for x in xs]
    spread = output_spread(refs)
    err = max(float(np.abs(np.asarray(runner.run(x)[0], np.float64) - np.asarray(r, np.float64)).max())
              for x, r in zip(xs, refs))
    runner.close()
    print(json.dumps({"variant": host.VARIANT, "tiles": tiles, "max_rel_err": err / spread, "tolerance": REL,
                      "output_spread": spread}))


if __name__ == "__main__":
    main(sys.argv[1])
