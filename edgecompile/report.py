"""`edgecompile report`: everything measured about one build, in one place.

* footprint: flash and RAM by section (linked ELF) and by symbol group (weights, kernels,
  executor, arena, runtime = startup/protocol/HAL/libc), from the ELF symbol table;
* memory plan: every buffer's place and lifetime in the arena (a timeline plot);
* per kernel: MACs, instruction counts and share of the inference, measured on the emulated
  device (SysTick under QEMU -icount, reported over the serial protocol's PROFILE request) or,
  for host builds, wall-clock time;
* cache behaviour per kernel, simulated with the target's cache geometry: on ARM by our QEMU
  TCG plugin (firmware_templates/qemu_plugins/ec_cache.c), on the host by valgrind cachegrind;
* the device's stack high-water mark (from `edgecompile test`).

Plots are matplotlib PNGs, embedded in the HTML report and written next to it.
"""

from __future__ import annotations

import base64
import html
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import EdgeCompileError

EXECUTOR = ("ec_model_run", "ec_model_run_multi", "ec_model_input", "ec_model_output")


# ----------------------------------------------------------------------------- ELF symbols


def elf_symbols(path: Path) -> list[dict[str, Any]]:
    """Defined FUNC/OBJECT symbols: name, address, size, type."""
    from .firmware import elf_symbol_table

    out = []
    for name, value, sz, info, shndx in elf_symbol_table(path):
        kind = info & 0xF
        if kind not in (1, 2) or shndx == 0 or sz == 0:     # OBJECT, FUNC; defined; sized
            continue
        # compiler clones keep the function's name before the first dot (f.constprop.0, f.isra.0)
        out.append({"name": name.split(".")[0] if not name.startswith(".") else name, "address": value & ~1,
                    "size": sz, "type": "func" if kind == 2 else "object"})
    return out


def symbol_groups(symbols: list[dict[str, Any]], kernel_names: set[str]) -> dict[str, dict[str, int]]:
    groups: dict[str, dict[str, int]] = {}

    def add(group: str, sym: dict[str, Any]) -> None:
        g = groups.setdefault(group, {"bytes": 0, "symbols": 0})
        g["bytes"] += sym["size"]
        g["symbols"] += 1

    for s in symbols:
        n = s["name"]
        if n.startswith("ec_w") and s["type"] == "object" or n.startswith("ec_weights"):
            add("weights", s)
        elif n == "ec_arena":
            add("arena", s)
        elif n in kernel_names or n.startswith(("ec_gemm_", "ec_dw_")):
            add("kernels", s)
        elif n in EXECUTOR:
            add("executor", s)
        else:
            add("runtime", s)
    return groups


# ----------------------------------------------------------------------------- gathering


def main_elf(build: Path, report: dict[str, Any]) -> Path | None:
    fw = report.get("firmware")
    if fw:
        variant = fw.get("board") or fw.get("linux")
        return build / variant["elf"]
    lib = build / "libmodel.so"
    return lib if lib.exists() else None


def collect(build: Path, profile: dict[str, Any] | None = None, cache: dict[str, Any] | None = None) -> dict[str, Any]:
    from .evaluation import read_build

    report = read_build(build)
    kernel_names = {c["name"] for c in report["calls"]}
    data: dict[str, Any] = {
        "model": report["model"], "target": report["target"], "quant": report.get("quant", {}).get("dtype", "fp32"),
        "macs": report["macs"], "weights_bytes": report["weights_bytes"], "arena_bytes": report["arena_bytes"],
        "kernels": report["kernels"],
    }
    elf = main_elf(build, report)
    if elf is not None:
        syms = elf_symbols(elf)
        data["symbol_groups"] = symbol_groups(syms, kernel_names)
        data["kernel_code_bytes"] = {s["name"]: s["size"] for s in syms if s["name"] in kernel_names}
    fw = report.get("firmware") or {}
    main = fw.get("board") or fw.get("linux")
    if main:
        data["footprint"] = {k: main[k] for k in ("flash_bytes", "ram_bytes", "arena_bytes", "stack_reserved_bytes")}
        data["sections"] = main["sections"]
        data["regions"] = main["regions"]
    if "stack_bytes" in report:
        data["stack_used_bytes"] = report["stack_bytes"]
    data["memory_plan"] = report.get("memory_plan", [])
    calls = []
    for c in report["calls"]:
        row = {k: c[k] for k in ("index", "name", "kind", "macs", "arena_offset", "arena_size")}
        calls.append(row)
    if profile:
        total = sum(profile["per_call"]) or 1
        for row, v in zip(calls, profile["per_call"]):
            row[profile["unit_key"]] = v
            row["share"] = v / total
        data["profile"] = {k: v for k, v in profile.items() if k != "per_call"}
    if cache:
        for row in calls:
            stats = cache["per_kernel"].get(row["name"])
            if stats:
                row["cache"] = stats
        data["cache"] = {k: v for k, v in cache.items() if k != "per_kernel"}
    data["calls"] = calls
    return data


# ----------------------------------------------------------------------------- measuring


def profile_device(build: Path, report: dict[str, Any], targets_dir: str | None = None, runs: int = 3) -> dict[str, Any]:
    """Per-call counts from the emulated device: SysTick under -icount = emulator instructions."""
    from .device import session_for
    from .protocol import PROFILE, PROFILE_RESP, Link
    from .targets import load_target

    target = load_target(report["target"], targets_dir)
    if target.firmware != "cortex_m":
        raise EdgeCompileError("per-kernel device profiles need a Cortex-M target (SysTick under QEMU -icount)")
    shape = tuple(report["inputs"][0]["shape"])
    dtype = report["inputs"][0]["dtype"]
    with session_for(target, build, report).start() as s:
        port = s.open_port()
        link = Link(port, timeout=60, alive=s.alive)
        link.connect()
        link.request(PROFILE, b"", PROFILE_RESP)                 # reset the counters
        x = np.zeros(shape, dtype=dtype)
        for _ in range(runs):
            link.infer(x, tuple(report["outputs"][0]["shape"]), in_dtype=dtype,
                       out_dtype=report["outputs"][0]["dtype"])
        payload = link.request(PROFILE, b"", PROFILE_RESP).payload
        port.close()
    ticks = np.frombuffer(payload, dtype="<u8").astype(np.float64) / runs
    shift = target.emulator.get("icount_shift", 0)
    per_tick = 1e9 / (target.clock_hz_emulated * 2 ** int(shift))
    return {"unit": "emulator instructions (not cycles)", "unit_key": "instructions",
            "per_call": [int(round(t * per_tick)) for t in ticks], "runs": runs,
            # one SysTick period: the phase of the timer against the instruction stream depends on
            # when the serial input arrived, so a call's count varies by up to one period
            "resolution": per_tick}


def profile_host(build: Path, report: dict[str, Any], runs: int = 50) -> dict[str, Any]:
    """Per-call wall-clock time of a host build (compiled again with -DEC_PROFILE)."""
    import ctypes

    from .targets import load_target

    target = load_target(report["target"])
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        for f in ("model.c", "model.h", "weights.c", "weights.S", "weights.bin"):
            if (build / f).exists():
                shutil.copy(build / f, t / f)
        (t / "clock.c").write_text(
            "#define _POSIX_C_SOURCE 199309L\n#include <stdint.h>\n#include <time.h>\n"
            "uint64_t ec_profile_clock(void) { struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);"
            " return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec; }\n")
        weights = "weights.c" if (t / "weights.c").exists() else "weights.S"
        subprocess.run([target.cc, *target.cflags, "-DEC_PROFILE", "-fPIC", "-shared", "-o", "prof.so", "model.c",
                        weights, "clock.c", *target.ldflags], cwd=t, check=True, capture_output=True)
        lib = ctypes.CDLL(str(t / "prof.so"))
        x = np.zeros(report["inputs"][0]["shape"], dtype=report["inputs"][0]["dtype"])
        y = np.zeros(report["outputs"][0]["shape"], dtype=report["outputs"][0]["dtype"])
        for _ in range(5):
            lib.ec_model_run(x.ctypes.data_as(ctypes.c_void_p), y.ctypes.data_as(ctypes.c_void_p))
        n = len(report["calls"])
        ticks = (ctypes.c_uint64 * n).in_dll(lib, "ec_profile_ticks")
        for i in range(n):
            ticks[i] = 0
        for _ in range(runs):
            lib.ec_model_run(x.ctypes.data_as(ctypes.c_void_p), y.ctypes.data_as(ctypes.c_void_p))
        per = [ticks[i] / runs for i in range(n)]
    return {"unit": "ns (wall clock, this machine)", "unit_key": "ns", "per_call": [int(round(v)) for v in per],
            "runs": runs}


def _geometry(target: Any) -> dict[str, str]:
    out = {}
    for c in target.caches:
        out[c.name.lower()] = f"{c.size}:{c.ways}:{c.line}"
    return out


def cache_device(build: Path, report: dict[str, Any], targets_dir: str | None = None, runs: int = 2) -> dict[str, Any]:
    """Per-kernel cache simulation under the target's emulator with our ec_cache plugin."""
    from .device import build_plugin, session_for
    from .protocol import Link
    from .targets import load_target

    target = load_target(report["target"], targets_dir)
    geometry = _geometry(target)
    if "l1i" not in geometry or "l1d" not in geometry:
        raise EdgeCompileError(f"target {target.name} declares no L1I/L1D caches ([[cache]] in its .toml)")
    from .device import firmware_path

    elf = firmware_path(build, report, emulated=True)    # the image the emulator runs
    names = sorted({c["name"] for c in report["calls"]})
    syms = {s["name"]: s for s in elf_symbols(elf) if s["type"] == "func"}
    missing = [n for n in names if n not in syms]
    if missing:
        raise EdgeCompileError(f"kernel symbols not in {elf.name}: {', '.join(missing[:3])}")
    plugin = build_plugin("ec_cache")
    with tempfile.TemporaryDirectory() as tmp:
        ranges = Path(tmp) / "ranges.txt"
        ranges.write_text("".join(f"{syms[n]['address']:x} {syms[n]['address'] + syms[n]['size']:x} {i}\n"
                                  for i, n in enumerate(names)))
        out = Path(tmp) / "cache.txt"
        args = f"ranges={ranges},out={out}," + ",".join(f"{k}={v}" for k, v in geometry.items())
        mark = (report.get("firmware") or {}).get("linux", {}).get("mark_address")
        if mark:     # a Linux program is killed, not exited: the plugin writes at every marker call
            args += f",mark={mark:#x}"
        session = session_for(target, build, report)
        session.extra_plugin = f"{plugin},{args}"
        shape = tuple(report["inputs"][0]["shape"])
        with session.start() as s:
            port = s.open_port()
            link = Link(port, timeout=600, alive=s.alive)
            link.connect()
            for _ in range(runs):
                link.infer(np.zeros(shape, dtype=report["inputs"][0]["dtype"]), tuple(report["outputs"][0]["shape"]),
                           in_dtype=report["inputs"][0]["dtype"], out_dtype=report["outputs"][0]["dtype"])
            port.close()
        text = out.read_text() if out.exists() else ""
    per = {}
    for line in text.splitlines():
        idx, insns, l1i_m, loads, stores, l1d_m, l2_a, l2_m = (int(v) for v in line.split())
        if 0 <= idx < len(names):
            per[names[idx]] = {"instructions": insns // runs, "l1i_misses": l1i_m // runs, "loads": loads // runs,
                               "stores": stores // runs, "l1d_misses": l1d_m // runs, "l2_misses": l2_m // runs}
    if not per:
        raise EdgeCompileError("the cache plugin produced no data")
    return {"method": "QEMU TCG plugin ec_cache (set-associative LRU model)", "geometry": geometry,
            "per_kernel": per, "runs": runs}


def cache_host(build: Path, report: dict[str, Any]) -> dict[str, Any]:
    """Per-kernel cache simulation of a host build with valgrind cachegrind (x86 code)."""
    from .targets import load_target

    if shutil.which("valgrind") is None:
        raise EdgeCompileError("valgrind not found (apt-get install valgrind)")
    target = load_target(report["target"])
    geometry = _geometry(target) or {"l1i": "32768:8:64", "l1d": "32768:8:64", "l2": "1048576:16:64"}
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        for f in ("model.c", "model.h", "weights.c", "weights.S", "weights.bin", "runner.c"):
            if (build / f).exists():
                shutil.copy(build / f, t / f)
        weights = "weights.c" if (t / "weights.c").exists() else "weights.S"
        # valgrind decodes up to AVX2: -march=native (AVX-512 here) would stop it with SIGILL
        cflags = ["-march=x86-64-v3" if f == "-march=native" else f for f in target.cflags]
        subprocess.run([target.cc, *cflags, "-g", "-o", "runner", "runner.c", "model.c", weights,
                        *target.ldflags], cwd=t, check=True, capture_output=True)
        np.zeros(report["inputs"][0]["shape"], dtype=report["inputs"][0]["dtype"]).tofile(t / "x.bin")
        g = {k: v.replace(":", ",") for k, v in geometry.items()}
        ll = g.get("l2", g.get("l3", "1048576,16,64"))
        proc = subprocess.run(["valgrind", "--tool=cachegrind", "--cache-sim=yes", f"--I1={g['l1i']}",
                               f"--D1={g['l1d']}", f"--LL={ll}", "--cachegrind-out-file=cg.out", "./runner", "x.bin",
                               "y.bin"], cwd=t, capture_output=True, text=True)
        if proc.returncode != 0:
            raise EdgeCompileError(f"cachegrind failed (exit {proc.returncode}): {proc.stderr.strip()[-300:]}")
        text = (t / "cg.out").read_text(errors="replace")
    events: list[str] = []
    per: dict[str, list[int]] = {}
    fn = None
    for line in text.splitlines():
        if line.startswith("events:"):
            events = line.split()[1:]
        elif line.startswith("fn="):
            fn = line[3:].strip().split(".")[0]      # f.constprop.0, f.isra.0 are f
        elif fn and line[:1].isdigit():
            nums = [int(v) for v in line.split()[1:]]
            acc = per.setdefault(fn, [0] * len(events))
            for i, v in enumerate(nums):
                acc[i] += v
    names = {c["name"] for c in report["calls"]}
    out = {}
    for name in names:
        v = dict(zip(events, per.get(name, [0] * len(events))))
        out[name] = {"instructions": v.get("Ir", 0), "l1i_misses": v.get("I1mr", 0), "loads": v.get("Dr", 0),
                     "stores": v.get("Dw", 0), "l1d_misses": v.get("D1mr", 0) + v.get("D1mw", 0),
                     "l2_misses": v.get("DLmr", 0) + v.get("DLmw", 0) + v.get("ILmr", 0)}
    return {"method": "valgrind cachegrind (x86-64 code, not ARM)", "geometry": geometry, "per_kernel": out, "runs": 1}


# ----------------------------------------------------------------------------- rendering


def _plots(data: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files: dict[str, Path] = {}
    plan = data.get("memory_plan") or []
    if plan:
        fig, ax = plt.subplots(figsize=(10, 5))
        colors = {"input": "#4c72b0", "output": "#dd8452", "activation": "#55a868", "scratch": "#c44e52"}
        for b in plan:
            ax.add_patch(plt.Rectangle((b["start"] - 0.45, b["offset"] / 1024), b["end"] - b["start"] + 0.9,
                                       b["size"] / 1024, facecolor=colors.get(b["kind"], "#8172b3"),
                                       edgecolor="black", linewidth=0.4, alpha=0.8))
        ax.set_xlim(-1.5, max(b["end"] for b in plan) + 1.5)
        ax.set_ylim(0, data["arena_bytes"] / 1024 * 1.02)
        ax.set_xlabel("kernel call")
        ax.set_ylabel("arena offset (KiB)")
        ax.set_title(f"memory plan: {data['model']} on {data['target']} (arena {data['arena_bytes']:,} B)")
        for kind, c in colors.items():
            ax.bar(0, 0, color=c, label=kind)
        ax.legend(loc="upper right", fontsize=8)
        files["memory_plan"] = out_dir / "memory_plan.png"
        fig.tight_layout()
        fig.savefig(files["memory_plan"], dpi=110)
        plt.close(fig)
    key = data.get("profile", {}).get("unit_key")
    if key:
        calls = data["calls"]
        fig, ax = plt.subplots(figsize=(10, 4))
        ax.bar(range(len(calls)), [c.get(key, 0) for c in calls], color="#4c72b0")
        ax.set_xlabel("kernel call")
        ax.set_ylabel(data["profile"]["unit"])
        ax.set_title("per-kernel cost")
        files["profile"] = out_dir / "kernels.png"
        fig.tight_layout()
        fig.savefig(files["profile"], dpi=110)
        plt.close(fig)
    groups = data.get("symbol_groups")
    if groups:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        names = sorted(groups, key=lambda g: -groups[g]["bytes"])
        ax.barh(names, [groups[g]["bytes"] / 1024 for g in names], color="#55a868")
        ax.set_xlabel("KiB")
        ax.set_title("footprint by symbol group")
        files["footprint"] = out_dir / "footprint.png"
        fig.tight_layout()
        fig.savefig(files["footprint"], dpi=110)
        plt.close(fig)
    return files


def write_html(data: dict[str, Any], path: Path) -> list[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    plots = _plots(data, path.parent)
    e = html.escape
    parts = [f"<!doctype html><meta charset='utf-8'><title>edgecompile report: {e(data['model'])}</title>",
             "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#eee}"
             "td:first-child,th:first-child{text-align:left}</style>",
             f"<h1>{e(data['model'])} on {e(data['target'])} ({e(data['quant'])})</h1>",
             f"<p>{data['macs']:,} MACs, {data['kernels']} kernel calls, weights {data['weights_bytes']:,} B, "
             f"arena {data['arena_bytes']:,} B"
             + (f", stack used {data['stack_used_bytes']:,} B (measured on the device)" if "stack_used_bytes" in data else "")
             + "</p>"]
    if "footprint" in data:
        fp = data["footprint"]
        parts.append("<h2>Footprint (linked binary)</h2><table><tr><th>flash</th><th>RAM</th><th>arena</th>"
                     "<th>stack reserved</th></tr>"
                     f"<tr><td>{fp['flash_bytes']:,}</td><td>{fp['ram_bytes']:,}</td><td>{fp['arena_bytes']:,}</td>"
                     f"<td>{fp['stack_reserved_bytes']:,}</td></tr></table>")
        parts.append("<h3>Sections</h3><table><tr><th>section</th><th>bytes</th></tr>" + "".join(
            f"<tr><td>{e(k)}</td><td>{v:,}</td></tr>" for k, v in data["sections"].items()) + "</table>")
    if "symbol_groups" in data:
        parts.append("<h3>Symbol groups</h3><table><tr><th>group</th><th>bytes</th><th>symbols</th></tr>" + "".join(
            f"<tr><td>{e(k)}</td><td>{v['bytes']:,}</td><td>{v['symbols']}</td></tr>"
            for k, v in sorted(data["symbol_groups"].items())) + "</table>")
    for key, title in (("footprint", "Footprint by group"), ("memory_plan", "Memory plan"), ("profile", "Kernels")):
        if key in plots:
            b64 = base64.b64encode(plots[key].read_bytes()).decode()
            parts.append(f"<h2>{title}</h2><img src='data:image/png;base64,{b64}' alt='{title}'>")
    unit = data.get("profile", {}).get("unit", "")
    key = data.get("profile", {}).get("unit_key")
    parts.append(f"<h2>Kernel calls</h2><p>{e(unit)}; cache: {e(data.get('cache', {}).get('method', 'not simulated'))}"
                 "</p><table><tr><th>#</th><th>kernel</th><th>kind</th><th>MACs</th>"
                 + (f"<th>{e(key)}</th><th>share</th>" if key else "")
                 + "<th>L1D misses</th><th>L1I misses</th><th>arena offset</th><th>size</th></tr>")
    for c in data["calls"]:
        cache = c.get("cache", {})
        parts.append(f"<tr><td>{c['index']}</td><td>{e(c['name'])}</td><td>{e(c['kind'])}</td><td>{c['macs']:,}</td>"
                     + (f"<td>{c.get(key, 0):,}</td><td>{c.get('share', 0):.1%}</td>" if key else "")
                     + f"<td>{cache.get('l1d_misses', '')}</td><td>{cache.get('l1i_misses', '')}</td>"
                     f"<td>{c['arena_offset'] if c['arena_offset'] is not None else 'external'}</td>"
                     f"<td>{c['arena_size']:,}</td></tr>")
    parts.append("</table><p>Generated by <code>edgecompile report</code>. Instruction counts from emulators are "
                 "emulator counts, not cycles; cache figures come from a cache model.</p>")
    path.write_text("\n".join(parts) + "\n")
    return [path, *plots.values()]


def format_text(data: dict[str, Any]) -> str:
    lines = [f"{data['model']} on {data['target']} ({data['quant']}): {data['macs']:,} MACs, "
             f"weights {data['weights_bytes']:,} B, arena {data['arena_bytes']:,} B"]
    if "footprint" in data:
        fp = data["footprint"]
        lines.append(f"flash {fp['flash_bytes']:,} B, RAM {fp['ram_bytes']:,} B, stack reserved "
                     f"{fp['stack_reserved_bytes']:,} B" + (f", stack used {data['stack_used_bytes']:,} B"
                                                           if "stack_used_bytes" in data else ""))
    if "symbol_groups" in data:
        lines.append("by group: " + ", ".join(f"{k} {v['bytes']:,} B" for k, v in sorted(data["symbol_groups"].items())))
    key = data.get("profile", {}).get("unit_key")
    if key:
        lines.append(f"per kernel ({data['profile']['unit']}):")
        for c in data["calls"]:
            cache = c.get("cache")
            extra = f"  L1D misses {cache['l1d_misses']:,}" if cache else ""
            lines.append(f"  {c['index']:3} {c['name'][:44]:44} {c.get(key, 0):>12,} {c.get('share', 0):6.1%}{extra}")
    return "\n".join(lines)


def save_json(data: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
