"""Compiling a build's C: translation units in parallel, through the object cache (platforms/objects.py).
A rebuild takes every object from the cache and gives the same files; a changed flag, source or
included header misses; a damaged entry is detected and compiled again, never linked; weights.c
assembled from its arrays' bytes gives the same symbols and bytes as weights.c compiled by gcc."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edgecompile.compiler import BuildOptions, Progress, write_build
from edgecompile.codegen.weights import emit_weights_c, parse_weights_c
from edgecompile.ir.frontend import ModelOptions, load_model
from edgecompile.platforms import host, objects
from edgecompile.platforms.host import HostModel
from edgecompile.platforms.objects import Unit, compile_units
from edgecompile.targets import load_target

from helpers import random_input

FLAGS = ["-O2"]
MAIN = '#include "k.h"\nint main(void) { return scale(2) == 2 * K ? 0 : 1; }\n'
LIB = '#include "k.h"\nint scale(int x) { return x * K; }\n'


def _sources(d: Path, k: int = 3) -> list[Unit]:
    d.mkdir(exist_ok=True)
    (d / "k.h").write_text(f"#define K {k}\nint scale(int x);\n")
    (d / "main.c").write_text(MAIN)
    (d / "lib.c").write_text(LIB)
    return [Unit(d, "main.c", d / "main.o"), Unit(d, "lib.c", d / "lib.o")]


def _entries(cache: Path) -> list[Path]:
    return sorted(cache.glob("*/*.o"))


def _link_and_run(d: Path, units: list[Unit]) -> int:
    subprocess.run(["gcc", "-o", str(d / "prog"), *[str(u.obj) for u in units]], check=True)
    return subprocess.run([str(d / "prog")]).returncode


def test_object_cache_hits_misses_on_any_change_and_rejects_damaged_entries(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGECOMPILE_OBJECT_CACHE", str(cache))
    units = _sources(tmp_path / "a")
    first = compile_units(units, "gcc", FLAGS, "host")
    assert (first.hits, first.misses, first.corrupt) == (0, 2, 0) and len(_entries(cache)) == 2
    compiled = [u.obj.read_bytes() for u in units]
    assert _link_and_run(tmp_path / "a", units) == 0

    # the same sources elsewhere: both from the cache, the same bytes, and they link and run
    again = _sources(tmp_path / "b")
    stats = compile_units(again, "gcc", FLAGS, "host")
    assert (stats.hits, stats.misses) == (2, 0) and stats.compiled == []
    assert [u.obj.read_bytes() for u in again] == compiled
    assert _link_and_run(tmp_path / "b", again) == 0

    # a changed flag, target, header (included by both) or source text misses
    assert compile_units(_sources(tmp_path / "c"), "gcc", ["-O1"], "host").misses == 2
    assert compile_units(_sources(tmp_path / "d"), "gcc", FLAGS, "rpi4").misses == 2
    assert compile_units(_sources(tmp_path / "e", k=5), "gcc", FLAGS, "host").misses == 2
    changed = _sources(tmp_path / "f")
    (tmp_path / "f" / "lib.c").write_text(LIB.replace("x * K", "K * x"))
    stats = compile_units(changed, "gcc", FLAGS, "host")
    assert (stats.hits, stats.misses, stats.compiled) == (1, 1, ["lib.c"])

    # a header found through -I counts as well
    for k in (3, 4):
        units_i = _sources(tmp_path / f"inc{k}", k)
        (tmp_path / f"inc{k}" / "inc").mkdir()
        (tmp_path / f"inc{k}" / "k.h").rename(tmp_path / f"inc{k}" / "inc" / "k.h")
        assert compile_units(units_i, "gcc", [*FLAGS, "-Iinc"], "host").misses == 2
        assert _link_and_run(tmp_path / f"inc{k}", units_i) == 0

    # damage the cached object of lib.c (O2, host, K=3): detected, compiled again, entry replaced
    key = objects.unit_key(units[1], "gcc", FLAGS, "host")
    entry = cache / key[:2] / f"{key}.o"
    data = bytearray(entry.read_bytes())
    data[-40] ^= 0xFF
    entry.write_bytes(bytes(data))
    damaged = _sources(tmp_path / "g")
    stats = compile_units(damaged, "gcc", FLAGS, "host")
    assert (stats.hits, stats.misses, stats.corrupt, stats.compiled) == (1, 1, 1, ["lib.c"])
    assert damaged[1].obj.read_bytes() == compiled[1]          # the compiler's object, not the damaged one
    assert _link_and_run(tmp_path / "g", damaged) == 0
    assert compile_units(_sources(tmp_path / "h"), "gcc", FLAGS, "host").hits == 2   # repaired
    entry.write_bytes(entry.read_bytes()[:100])                  # truncated
    assert compile_units(_sources(tmp_path / "i"), "gcc", FLAGS, "host").corrupt == 1

    # no temporary files left in the cache; `off` compiles everything and stores nothing
    assert not [p for p in cache.rglob("*") if p.is_file() and p.suffix != ".o"]
    monkeypatch.setenv("EDGECOMPILE_OBJECT_CACHE", "off")
    before = _entries(cache)
    assert compile_units(_sources(tmp_path / "j"), "gcc", FLAGS, "host").misses == 2
    assert _entries(cache) == before


def test_concurrent_builds_share_the_cache_safely(tmp_path, monkeypatch):
    """Builds compiling the same sources at once: each gets correct objects, no entry is damaged
    and no temporary file stays (each entry is written to a temporary file, then renamed)."""
    from concurrent.futures import ThreadPoolExecutor

    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGECOMPILE_OBJECT_CACHE", str(cache))
    dirs = [tmp_path / f"b{i}" for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        stats = list(pool.map(lambda d: compile_units(_sources(d), "gcc", FLAGS, "host"), dirs))
    assert all(s.corrupt == 0 and s.hits + s.misses == 2 for s in stats)
    assert {(d / "lib.o").read_bytes() for d in dirs} == {(dirs[0] / "lib.o").read_bytes()}
    assert all(_link_and_run(d, _sources(d)) == 0 for d in dirs[:2])
    assert len(_entries(cache)) == 2 and not [p for p in cache.rglob("*") if p.is_file() and p.suffix != ".o"]
    again = compile_units(_sources(tmp_path / "after"), "gcc", FLAGS, "host")
    assert (again.hits, again.corrupt) == (2, 0)


def test_a_compile_error_names_the_unit_and_stops_the_others(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECOMPILE_OBJECT_CACHE", str(tmp_path / "cache"))
    units = _sources(tmp_path / "a")
    (tmp_path / "a" / "lib.c").write_text("int scale(int x) { return x * UNDEFINED_NAME; }\n")
    from edgecompile.errors import ToolchainError

    with pytest.raises(ToolchainError, match=r"gcc: compiling lib.c failed: .*UNDEFINED_NAME"):
        compile_units(units, "gcc", FLAGS, "host")
    assert _entries(tmp_path / "cache") == []


def test_weights_c_is_read_back_exactly_and_anything_else_is_refused():
    """parse_weights_c gives every array's bytes of a weights.c that emit_weights_c wrote (every
    number format, odd sizes, extreme values), and None for any other text."""
    rng = np.random.default_rng(0)
    weights, tensors = {}, {}
    for i, (dtype, shape) in enumerate([("float32", (3, 3, 3, 8)), ("int8", (17,)), ("int32", (9,)),
                                        ("int16", (8,)), ("int64", (5,)), ("float32", (1,)), ("int8", (64,))]):
        arr = rng.integers(-100, 100, size=shape).astype(dtype) if dtype != "float32" else \
            rng.standard_normal(shape).astype(dtype)
        arr.reshape(-1)[0] = np.iinfo(dtype).min if dtype != "float32" else -np.inf
        weights[f"w{i}"], tensors[f"w{i}"] = arr, SimpleNamespace(dtype=dtype, shape=shape)
    text = emit_weights_c(SimpleNamespace(weights=weights, tensors=tensors))
    arrays = parse_weights_c(text)
    assert [s for s, _ in arrays] == [f"ec_{n}" for n in weights]
    assert [d for _, d in arrays] == [np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes()
                                      for a in weights.values()]
    first = text.index("0x")
    for bad in (text.replace("0x", "0X", 1), text[:first] + text[first + 1:], text.replace(", ", ",  ", 1),
                text.replace("bits[216]", "bits[217]"), text.replace("#include <stdint.h>", "#include <stddef.h>"),
                text[:-1], text + "int x;\n", text.replace("section(", "section (", 1)):
        assert bad != text and parse_weights_c(bad) is None


SMALL = dict(width_mult=0.25, resolution=32, num_classes=10)


def _counting(monkeypatch) -> list:
    """The CompileStats of every host build from now on (the real compile_units, observed)."""
    calls: list = []
    real = host.compile_units

    def counting(*args, **kwargs):
        calls.append(real(*args, **kwargs))
        return calls[-1]

    monkeypatch.setattr(host, "compile_units", counting)
    return calls


def _build(out: Path) -> dict:
    source = load_model("mobilenet_v1", ModelOptions(**SMALL))
    return write_build(source, load_target("host"), out, BuildOptions(compare_unfused=False), Progress(quiet=True))


def _weight_symbols(lib: Path) -> dict[str, bytes]:
    """The bytes of every weight array (ec_w*) a shared library defines."""
    import ctypes

    listing = subprocess.run(["nm", "--defined-only", "-S", str(lib)], check=True, capture_output=True,
                             text=True).stdout
    handle = ctypes.CDLL(str(lib))
    out = {}
    for line in listing.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[3].startswith("ec_w"):
            out[parts[3]] = bytes((ctypes.c_ubyte * int(parts[1], 16)).in_dll(handle, parts[3]))
    return out


def test_a_second_build_takes_every_object_from_the_cache_and_writes_the_same_files(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECOMPILE_OBJECT_CACHE", str(tmp_path / "cache"))
    calls = _counting(monkeypatch)
    _build(tmp_path / "cold")
    _build(tmp_path / "warm")
    cold, warm = calls
    assert (cold.hits, cold.misses) == (0, 3) and (warm.hits, warm.misses, warm.corrupt) == (3, 0, 0)
    names = sorted(p.name for p in (tmp_path / "cold").iterdir())
    assert "libmodel.so" in names and "runner" in names
    assert names == sorted(p.name for p in (tmp_path / "warm").iterdir())
    for name in names:
        assert (tmp_path / "cold" / name).read_bytes() == (tmp_path / "warm" / name).read_bytes(), name

    # weights.c went in as its arrays' bytes: the same symbols and bytes as weights.c compiled by
    # the C compiler (that path forced), the same outputs
    assert cold.compiled == ["model.c", "weights_data.S", "runner.c"]
    monkeypatch.setattr(objects, "parse_weights_c", lambda text: None)
    _build(tmp_path / "compiled")
    assert calls[-1].compiled == ["weights.c"] and calls[-1].hits == 2        # model.c and runner.c
    fast, compiled = HostModel(tmp_path / "cold"), HostModel(tmp_path / "compiled")
    try:
        x = random_input(fast.inputs[0][0], seed=3)
        assert np.array_equal(fast.run(x)[0], compiled.run(x)[0])
    finally:
        fast.close()
        compiled.close()
    weights = _weight_symbols(tmp_path / "cold" / "libmodel.so")
    assert len(weights) > 10 and weights == _weight_symbols(tmp_path / "compiled" / "libmodel.so")


def test_a_pi_rebuild_takes_the_device_loop_and_the_model_from_the_cache(tmp_path, monkeypatch):
    """rpi4 (a Linux board): the same units compiled apart link into the same `app`, twice."""
    monkeypatch.setenv("EDGECOMPILE_OBJECT_CACHE", str(tmp_path / "cache"))
    from edgecompile.platforms import linux

    calls: list = []
    real = linux.compile_units

    def counting(*args, **kwargs):
        calls.append(real(*args, **kwargs))
        return calls[-1]

    monkeypatch.setattr(linux, "compile_units", counting)
    source = load_model("mobilenet_v1", ModelOptions(**SMALL))
    for out in ("cold", "warm"):
        write_build(source, load_target("rpi4"), tmp_path / out, BuildOptions(compare_unfused=False),
                    Progress(quiet=True))
    cold, warm = calls
    assert cold.compiled == ["model.c", "weights_data.S", "ec_device.c", "ec_protocol.c", "hal_linux.c"]
    assert (warm.hits, warm.misses) == (5, 0)
    assert (tmp_path / "cold" / "app").read_bytes() == (tmp_path / "warm" / "app").read_bytes()
