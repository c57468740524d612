"""Helpers shared by the tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def slow_params(values, slow, key=lambda v: v) -> list:
    """`values` for pytest.mark.parametrize, those whose key is in `slow` marked slow (a tuple
    value is one case of several arguments)."""
    import pytest

    return [pytest.param(*(v if isinstance(v, tuple) else (v,)), marks=pytest.mark.slow) if key(v) in slow else v
            for v in values]


def gemm_tile_re(m: int | str, n: int | str) -> str:
    r"""A float M x N GEMM tile's kernel in model.c, in any of its forms: the += kernel, the
    zero-start one (`_z`), summed over R kernel rows (`_rR_z`), or with its epilogue (`_z_e<code>`,
    `_rR_z_e<code>`). M or N may be a regex (r"\d+")."""
    return rf"\bec_gemm_f32_{m}x{n}(?:(?:_r\d+)?_z(?:_e[A-Za-z0-9]+)?)?\("


def has_gemm_tile(code: str, m: int | str, n: int | str) -> bool:
    return re.search(gemm_tile_re(m, n), code) is not None


def dwpw_layers(ci: int, co: int, k: int, stride: int) -> list:
    """A depthwise KxK convolution (same padding), ReLU6 and a pointwise one: a fused dw+pw kernel."""
    from torch import nn

    return [nn.Conv2d(ci, ci, k, stride=stride, padding=k // 2, groups=ci), nn.ReLU6(), nn.Conv2d(ci, co, 1)]


def random_input(shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def run_cli(*args: str, cwd: Path | None = None, check: bool = False, timeout: float | None = None):
    """Run the installed console script the way a user does. No time limit by default: a build or a
    training run takes what the machine gives it (a loaded CI runner is slow, not wrong)."""
    exe = Path(sys.executable).with_name("edgecompile")
    cmd = [str(exe) if exe.exists() else sys.executable, *([] if exe.exists() else ["-m", "edgecompile"]), *args]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


SPREAD_MIN = 0.1   # reference outputs of different inputs must differ by >= 10% of their magnitude


def output_spread(refs) -> float:
    """The largest difference between reference outputs of different inputs. Fails loudly when
    the reference does not depend on its input: a comparison on such a network checks only the
    layers after the collapse, and proves nothing about the ones before it."""
    r = np.stack([np.asarray(x, np.float64).reshape(-1) for x in refs])
    assert len(r) >= 2, "a spread needs the outputs of two inputs at least"
    spread = float((r.max(0) - r.min(0)).max())
    magnitude = float(np.abs(r).max())
    assert spread >= SPREAD_MIN * magnitude, (
        f"vacuous comparison: reference outputs of different inputs differ by at most {spread:.3g}, "
        f"their magnitude is {magnitude:.3g}")
    return spread


def assert_close(got, ref, spread: float, rel: float) -> None:
    """|got - ref| <= rel x spread everywhere (the tolerance stated relative to the spread)."""
    err = float(np.abs(np.asarray(got, np.float64) - np.asarray(ref, np.float64)).max())
    assert err <= rel * spread, f"max |got - ref| = {err:.3g} > {rel} x spread {spread:.3g}"


def compare_with_reference(run, reference, shape, rel: float, seeds=range(3)) -> float:
    """Run `run` and `reference` on random inputs, assert the spread, then closeness; returns
    the spread."""
    xs = [random_input(shape, s) for s in seeds]
    refs = [reference(x) for x in xs]
    spread = output_spread(refs)
    for x, ref in zip(xs, refs):
        got = run(x)
        assert got.shape == ref.shape
        assert_close(got, ref, spread, rel)
    return spread


def use_host_variant(monkeypatch, variant: str):
    """Build host C with the rules of `variant` ("avx2" or "avx512", host.rules_for) for the rest of
    the test, whatever this machine's variant: a test of a rule measured on one variant checks it
    on every CI machine. Returns the rules."""
    from edgecompile.schedules import host

    rules = host.rules_for(variant)
    monkeypatch.setattr(host, "RULES", rules)
    monkeypatch.setattr(host, "LANES", rules.lanes)
    monkeypatch.setattr(host, "VARIANT", variant)
    return rules


def host_builds_with_and_without(tmp_path, monkeypatch, source, rules, attr: str):
    """(directory, C) of two host builds of `source` (a frontend Source): as the host's `rules` are,
    then with `rules.<attr>` set False (monkeypatched for the rest of the test)."""
    from edgecompile.compiler import BuildOptions, Progress, write_build
    from edgecompile.targets import load_target

    out = []
    for name, value in (("on", None), ("off", False)):
        if value is not None:
            monkeypatch.setattr(rules, attr, value)
        d = tmp_path / f"{attr}_{name}"
        write_build(source, load_target("host"), d, BuildOptions(compare_unfused=False), Progress(quiet=True))
        out.append((d, (d / "model.c").read_text()))
    return out


def assert_same_bits_and_close(a_dir, b_dir, source, shape, rel: float) -> None:
    """The host builds in `a_dir` and `b_dir` give bit-identical outputs on three random inputs, and
    the first matches `source`'s PyTorch reference within `rel` x the spread of its outputs."""
    from edgecompile.platforms.host import HostModel

    a, b = HostModel(a_dir), HostModel(b_dir)
    try:
        for s in range(3):
            x = random_input(shape, s)
            assert np.array_equal(a.run(x)[0].view(np.uint32), b.run(x)[0].view(np.uint32))
        compare_with_reference(lambda x: a.run(x)[0], lambda x: source.reference(x)[0], shape, rel)
    finally:
        a.close()
        b.close()


def keep_input_dependence(model, layers=None):
    """Scale `model`'s weights He-like (x2.5) and shrink its biases (x0.1), in place, for the
    layers of the given types (default: Conv2d and Linear): a deep random network's output then
    keeps depending on its input instead of collapsing to a constant. Returns the model."""
    import torch
    from torch import nn

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, layers or (nn.Conv2d, nn.Linear)):
                m.weight.mul_(2.5)
                m.bias.mul_(0.1)
    return model


def board_outputs(board: str, out, rep: dict, inputs, timeout: float = 120, dtype: str = "float32",
                  on_connect=None) -> list:
    """The outputs of the build in `out` (its report `rep`) on `board`'s emulator, one per input,
    through the real serial protocol; `dtype` is the input and output type (int8 for int8 builds).
    `on_connect(info)` sees the device's INFO answer before the first input is sent."""
    from edgecompile.device.protocol import Link
    from edgecompile.platforms import platform_for
    from edgecompile.targets import load_target

    t = load_target(board)
    out_shape = tuple(rep["outputs"][0]["shape"])
    with platform_for(t).start_emulator(t, out, rep) as s:
        port = s.open_port()
        try:
            link = Link(port, timeout=timeout, alive=s.alive)
            info = link.connect()
            if on_connect is not None:
                on_connect(info)
            return [link.infer(x, out_shape, in_dtype=dtype, out_dtype=dtype).output for x in inputs]
        finally:
            port.close()


def run_c_cases_on_the_pi(tmp_path, target, parts: list[str], cases: list[str]) -> None:
    """Compile the C definitions `parts` and a main running `cases` (statements that add their
    wrong results to `bad`) with the Pi target's compiler and flags, run it under `qemu-aarch64 -cpu
    cortex-a72`: every case must pass."""
    code = "\n".join([*parts, "int main(void) {", "  int bad = 0;", *cases,
                      '  printf("bad %d of %d\\n", bad, ' + str(len(cases)) + ");", "  return bad != 0;", "}"])
    (tmp_path / "t.c").write_text(code)
    subprocess.run([target.cc, "-static", *target.cflags, str(tmp_path / "t.c"), "-o", str(tmp_path / "t"),
                    "-lm"], check=True)
    run = subprocess.run(["qemu-aarch64", "-cpu", "cortex-a72", str(tmp_path / "t")], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"bad 0 of {len(cases)}" in run.stdout
