"""TensorFlow Lite Micro's arena for the visual-wake-words-shaped network, next to ours.

Runs in a separate benchmark environment (never installed by `make test`):

    benchmarks/run.sh --help >/dev/null   # (or any run) creates .venv-litert with litert-torch
    .venv-litert/bin/pip install tflite-micro ai-edge-litert==2.3.0
    .venv-litert/bin/python benchmarks/tflm_vww.py --out benchmarks/tflm_vww.json

The network is our zoo's MobileNet V1 (alpha 0.25, 96x96, 2 classes), same seed, converted to
an int8 .tflite with litert-torch (PT2E post-training quantization, calibrated on the same digits
images edgecompile uses), then loaded by the tflite-micro Python interpreter, whose
`print_allocations()` reports the arena it needs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models import build_model  # noqa: E402  (the zoo, importable without edgecompile's deps)


def digits_like(n: int, size: int) -> np.ndarray:
    from sklearn.datasets import load_digits
    import torch.nn.functional as F

    x = torch.from_numpy(load_digits().images[:n].astype(np.float32) / 16.0)[:, None]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    return ((x - 0.3) / 0.4).numpy()


def convert_int8(model: torch.nn.Module, shape: tuple[int, ...], calib: np.ndarray, path: Path) -> None:
    import litert_torch
    from litert_torch.quantize import pt2e_quantizer, quant_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    example = (torch.from_numpy(calib[:1]),)
    exported = torch.export.export(model, example).module()
    prepared = prepare_pt2e(exported, quantizer)
    for x in calib:
        prepared(torch.from_numpy(x[None]))
    quantized = convert_pt2e(prepared, fold_quantize=False)
    edge = litert_torch.convert(quantized, example,
                                quant_config=quant_config.QuantConfig(pt2e_quantizer=quantizer))
    edge.export(str(path))


def tflm_arena(path: Path) -> dict[str, int]:
    from tflite_micro.python.tflite_micro import runtime

    buf = io.StringIO()
    r, w = os.pipe()
    saved = os.dup(2)
    os.dup2(w, 2)
    try:
        interp = runtime.Interpreter.from_file(str(path), arena_size=4 << 20)
        interp.print_allocations()
    finally:
        os.dup2(saved, 2)
        os.close(w)
    text = os.read(r, 1 << 20).decode(errors="replace")
    buf.write(text)
    out = {}
    for key in ("total", "head", "tail"):
        m = re.search(rf"Arena allocation {key} (\d+) bytes", text)
        if m:
            out[key] = int(m.group(1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/tflm_vww.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    model, shape = build_model("mobilenet_v1", width_mult=0.25, resolution=96, num_classes=2, seed=0)
    calib = digits_like(100, 96)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vww_int8.tflite"
        with contextlib.redirect_stdout(io.StringIO()):
            convert_int8(model, shape, calib, path)
        arena = tflm_arena(path)
        result = {"network": "mobilenet_v1 alpha=0.25 96x96 2 classes, int8", "tflite_bytes": path.stat().st_size,
                  "tflm_arena": arena}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
