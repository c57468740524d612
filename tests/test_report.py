"""`edgecompile report`: the numbers agree with the linked binary and the memory plan, the
emulator counts are deterministic, and the cache model gives what a hand calculation predicts."""

import json
import shutil
import subprocess

import pytest

from edgecompile.measure import report as rep
from edgecompile.device.elf import elf_symbols
from edgecompile.device.plugins import build_plugin
from edgecompile.platforms import platform_for
from edgecompile.targets import load_target
from edgecompile.build_dir import read_build
from helpers import REPO, run_cli

FP32 = dict(quant="fp32", width_mult=0.25, resolution=32, num_classes=10)


def _size_sections(elf):
    """`arm-none-eabi-size -A`: {section: size} for allocated sections."""
    out = subprocess.run(["arm-none-eabi-size", "-A", str(elf)], capture_output=True, text=True, check=True).stdout
    sizes = {}
    for line in out.splitlines()[2:]:
        parts = line.split()
        if len(parts) == 3 and parts[1].isdigit():
            sizes[parts[0]] = int(parts[1])
    return sizes


def test_footprint_matches_the_binary_and_the_plan(build_cache):
    _, out, report = build_cache("mobilenet_v1", target="mps2-an386", **FP32)
    data = rep.collect(out)
    elf = out / report["firmware"]["board"]["elf"]
    size = _size_sections(elf)
    assert data["sections"] and all(size[name] == n for name, n in data["sections"].items())
    # flash = everything loaded from flash; RAM = everything resident in RAM
    groups = data["symbol_groups"]
    assert groups["weights"]["bytes"] == report["weights_bytes"]
    assert groups["arena"]["bytes"] == report["arena_bytes"]
    assert groups["kernels"]["symbols"] == len({c["name"] for c in report["calls"]})
    assert sum(g["bytes"] for g in groups.values()) <= sum(data["sections"].values())
    assert data["footprint"]["flash_bytes"] >= groups["weights"]["bytes"] + groups["kernels"]["bytes"]
    # the arena is exactly the plan's extent
    plan = data["memory_plan"]
    assert plan and max(b["offset"] + b["size"] for b in plan) == report["arena_bytes"]
    assert data["footprint"]["arena_bytes"] == report["arena_bytes"]
    # no two buffers that are live together share bytes, except the in-place pairs the plan lists
    in_place = {frozenset(p) for p in report["memory_in_place"]}
    for i, a in enumerate(plan):
        for b in plan[i + 1:]:
            live = a["start"] <= b["end"] and b["start"] <= a["end"]
            disjoint = a["offset"] + a["size"] <= b["offset"] or b["offset"] + b["size"] <= a["offset"]
            assert not live or disjoint or frozenset((a["name"], b["name"])) in in_place, (a, b)


def test_device_profile_is_deterministic(build_cache):
    _, out, report = build_cache("mobilenet_v1", target="mps2-an386", **FP32)
    t = load_target("mps2-an386")
    first = platform_for(t).profile(t, out, report, runs=2)
    second = platform_for(t).profile(t, out, report, runs=2)
    # SysTick under -icount: exact up to one timer period (its phase depends on input arrival)
    assert all(abs(a - b) <= first["resolution"] for a, b in zip(first["per_call"], second["per_call"]))
    assert len(first["per_call"]) == len(report["calls"])
    convs = [c["index"] for c in report["calls"] if c["macs"] > 0]
    assert all(first["per_call"][i] > 0 for i in convs)
    assert "not cycles" in first["unit"]


def test_device_cache_simulation_is_deterministic(build_cache):
    _, out, report = build_cache("mobilenet_v1", target="rpi4", **FP32)
    t = load_target("rpi4")
    a = platform_for(t).cache(t, out, report, runs=1)
    b = platform_for(t).cache(t, out, report, runs=1)
    assert a["per_kernel"] == b["per_kernel"]
    assert a["geometry"]["l1d"] == "32768:2:64"
    for name, stats in a["per_kernel"].items():
        assert stats["instructions"] > 0 and stats["l1d_misses"] <= stats["loads"] + stats["stores"], name


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None, reason="needs the aarch64 cross compiler")
def test_cache_model_matches_a_hand_calculation(tmp_path):
    """tests/cache/stride_walk.c: 3 passes over 64 KB with one load per 64-byte line.
    32 KB 2-way L1D, LRU: a 64 KB sequential walk evicts every line before its reuse, so all
    3 x 1024 loads miss. 1 MB L2: only the first pass misses (1024), plus the one code line."""
    exe = tmp_path / "walk"
    subprocess.run(["aarch64-linux-gnu-gcc", "-O2", "-static", "-o", str(exe), str(REPO / "tests/cache/stride_walk.c")],
                   check=True)
    walk = next(s for s in elf_symbols(exe) if s["name"] == "walk")
    ranges = tmp_path / "ranges.txt"
    ranges.write_text(f"{walk['address']:x} {walk['address'] + walk['size']:x} 0\n")
    out = tmp_path / "cache.txt"
    plugin = build_plugin("ec_cache")
    args = f"ranges={ranges},out={out},l1i=49152:3:64,l1d=32768:2:64,l2=1048576:16:64"
    subprocess.run(["qemu-aarch64", "-cpu", "cortex-a72", "-plugin", f"{plugin},{args}", str(exe)], check=True)
    rows = {int(r[0]): [int(v) for v in r[1:]] for r in (ln.split() for ln in out.read_text().splitlines())}
    insns, l1i_misses, loads, stores, l1d_misses, l2_accesses, l2_misses = rows[0]
    assert loads == 3 * 1024 and stores == 0
    assert l1d_misses == 3 * 1024
    assert l1i_misses == 1                       # the loop fits in one cache line
    assert l2_accesses == l1d_misses + l1i_misses
    assert l2_misses == 1024 + 1
    # a cache that holds the whole buffer: only the first pass misses in L1D too
    args = f"ranges={ranges},out={out},l1i=49152:3:64,l1d=131072:2:64"
    subprocess.run(["qemu-aarch64", "-cpu", "cortex-a72", "-plugin", f"{plugin},{args}", str(exe)], check=True)
    rows = {int(r[0]): [int(v) for v in r[1:]] for r in (ln.split() for ln in out.read_text().splitlines())}
    assert rows[0][4] == 1024


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="needs valgrind")
def test_report_cli_host_html_json_and_cachegrind(build_cache, tmp_path):
    _, out, report = build_cache("mobilenet_v1", **{k: v for k, v in FP32.items() if k != "quant"})
    html = tmp_path / "r" / "report.html"
    proc = run_cli("report", str(out), "--html", str(html), "--json", "--cache")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["arena_bytes"] == read_build(out)["arena_bytes"]
    assert data["profile"]["unit"].startswith("ns")
    assert "cachegrind" in data["cache"]["method"]
    kernels = [c for c in data["calls"] if c["macs"] > 0]
    assert kernels and all(c["cache"]["instructions"] > 0 for c in kernels)
    # cachegrind's instructions of the first conv are in the ballpark of its MACs (fp32, vectorised)
    assert sum(c["cache"]["instructions"] for c in kernels) < 4 * report["macs"]
    for png in ("memory_plan.png", "kernels.png"):
        assert (html.parent / png).stat().st_size > 1000
    text = html.read_text()
    assert "<img" in text and "memory plan" in text.lower()


def test_report_on_the_pi_counts_every_kernel(build_cache):
    _, out, report = build_cache("mobilenet_v1", target="rpi4", **FP32)
    proc = run_cli("report", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert "not cycles" in data["profile"]["unit"] and "profile_unavailable" not in data
    convs = [c for c in data["calls"] if c["macs"] > 0]
    assert convs and all(c["instructions"] > 0 for c in convs)
    # a conv needs at least one instruction per 4 MACs (4-lane NEON FMAs)
    assert all(c["instructions"] * 4 >= c["macs"] for c in convs)


def test_pi_kernel_counts_add_up_to_the_inference(build_cache):
    """The per-kernel instructions of an int8 Pi build add up to the inference's (the executor's own
    loop aside): the micro-kernels gcc keeps out of line, several clones of one (f.constprop.0,
    f.constprop.1...), count for the kernel that called them. With only one clone per name
    attributed, MobileNet V2 0.35/96's kernels added up to 80% of its 5.88 M instructions."""
    from edgecompile.measure.accuracy import run_test

    _, out, report = build_cache("mobilenet_v2", target="rpi4", quant="int8", width_mult=0.35, resolution=96,
                                 num_classes=10)
    clones = [s["name"] for s in elf_symbols(platform_for(load_target("rpi4")).program(out, report, emulated=True))
              if s["type"] == "func" and s["name"].startswith("ec_gemm_")]
    assert len(clones) > len(set(clones)), clones           # the case this test is about: clones of one kernel
    total = run_test(out, samples=1, dataset="digits")["instructions_per_inference"]
    data = json.loads(run_cli("report", str(out), "--json", check=True).stdout)
    kernels = sum(c["instructions"] for c in data["calls"])
    assert 0.97 * total <= kernels <= total, (kernels, total)


def test_weights_in_weights_s_count_as_the_weights_group(tmp_path):
    """Above 16 MB the weights go to weights.S + weights.bin: the report still finds them."""
    out = tmp_path / "big"
    proc = run_cli("build", "mobilenet_v1", "--width-mult", "2", "--resolution", "32", "--num-classes", "10", "--out", str(out),
                   "--json", "-q", check=True)
    report = json.loads(proc.stdout)
    assert (out / "weights.S").is_file() and report["weights_bytes"] > 16 << 20
    data = json.loads(run_cli("report", str(out), "--json", "--no-profile", check=True).stdout)
    weights = data["symbol_groups"]["weights"]     # each weight once, not each at the whole blob's size
    assert weights["bytes"] == report["weights_bytes"], weights
    assert weights["symbols"] == (out / "weights.S").read_text().count(".global ec_w")
    # each weight's ELF symbol has its own size (nm, size tools), not the blob's
    from edgecompile.device.elf import elf_symbols

    sizes = [s["size"] for s in elf_symbols(out / "libmodel.so") if s["name"].startswith("ec_w") and s["name"] != "ec_weights_blob"]
    assert len(sizes) == weights["symbols"] and sum(sizes) == report["weights_bytes"], (len(sizes), sum(sizes))


def test_html_timeline_shows_the_patch_stage(tmp_path):
    """A patched build's report: `patch_plan.stage_calls` spans the calls up to the last band's
    write into the stage output (each band writes it once, nothing after the stage does), and the
    HTML says so and shades it in the memory-plan timeline."""
    from edgecompile.compiler import BuildOptions, Progress, write_build
    from edgecompile.ir.frontend import ModelOptions, load_model

    source = load_model("mobilenet_v1", ModelOptions(width_mult=0.25, resolution=64, num_classes=10))
    out = tmp_path / "b"
    report = write_build(source, load_target("host"), out, BuildOptions(patch=(4, 2), compare_unfused=False),
                         Progress(quiet=True))
    pp = report["patch_plan"]
    first, end = pp["stage_calls"]
    assert first == 0 and 0 < end < len(report["calls"])
    writes = [c["arena_offset"] for c in report["calls"]]
    stage_root = report["calls"][end - 1]["arena_offset"]
    assert sum(1 for w in writes[:end] if w == stage_root) >= pp["bands"]
    assert stage_root not in writes[end:end + 1]
    data = rep.collect(out)
    html = tmp_path / "r" / "report.html"
    rep.write_html(data, html)
    text = html.read_text()
    assert f"the first {pp['layers']} window layers in {pp['bands']} bands of 2 rows" in text
    assert f"calls 0..{end - 1}" in text and (html.parent / "memory_plan.png").stat().st_size > 1000
