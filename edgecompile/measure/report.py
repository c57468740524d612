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
from pathlib import Path
from typing import Any

from ..build_dir import read_build
from ..device.elf import elf_symbols
from ..errors import EdgeCompileError
from ..platforms import platform_for

EXECUTOR = ("ec_model_run", "ec_model_run_multi", "ec_model_input", "ec_model_output")


# ----------------------------------------------------------------------------- ELF symbols


def symbol_groups(symbols: list[dict[str, Any]], kernel_names: set[str]) -> dict[str, dict[str, int]]:
    groups: dict[str, dict[str, int]] = {}

    def add(group: str, sym: dict[str, Any]) -> None:
        g = groups.setdefault(group, {"bytes": 0, "symbols": 0})
        g["bytes"] += sym["size"]
        g["symbols"] += 1

    for s in symbols:
        n = s["name"]
        if n == "ec_weights_blob":
            continue        # weights.S: the weights inside it are objects of their own sizes
        if n.startswith("ec_w") and s["type"] == "object":
            add("weights", s)
        elif n == "ec_arena":
            add("arena", s)
        elif n in kernel_names or n.startswith(("ec_gemm_", "ec_dw_", "ec_window_", "ec_requant_")):
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
        return build / next(iter(fw.values()))["elf"]     # the board's own program comes first
    lib = build / "libmodel.so"
    return lib if lib.exists() else None


def collect(build: Path, profile: dict[str, Any] | None = None, cache: dict[str, Any] | None = None) -> dict[str, Any]:
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
    main = next(iter((report.get("firmware") or {}).values()), None)
    if main:
        data["footprint"] = {k: main[k] for k in ("flash_bytes", "ram_bytes", "arena_bytes", "stack_reserved_bytes")}
        data["sections"] = main["sections"]
        data["regions"] = main["regions"]
    if "stack_bytes" in report:
        data["stack_used_bytes"] = report["stack_bytes"]
    data["memory_plan"] = report.get("memory_plan", [])
    data["patch_plan"] = report.get("patch_plan")
    calls = []
    for c in report["calls"]:
        row = {k: c[k] for k in ("index", "name", "kind", "macs", "arena_offset", "arena_size")}
        row["in_place"] = bool(c.get("in_place"))      # output over the input rows it consumed
        calls.append(row)
    if profile and "unavailable" in profile:
        data["profile_unavailable"] = profile["unavailable"]
    elif profile:
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


def measure(build: Path, target: Any, report: dict[str, Any], profile: bool = True,
            cache: bool = False) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Per-kernel costs and cache behaviour from the target's platform. A platform that cannot
    profile gives no profile (the text says why), not an error; `cache` was asked for, so its
    failure is one."""
    platform = platform_for(target)
    prof = None
    if profile:
        try:
            prof = platform.profile(target, build, report)
        except EdgeCompileError as err:
            prof = {"unavailable": str(err)}
    return prof, (platform.cache(target, build, report) if cache else None)


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
        pp = data.get("patch_plan")
        if pp and pp.get("stage_calls", [0, 0])[1] > 0:          # the calls that run the patch stage
            first, end = pp["stage_calls"]
            ax.axvspan(first - 0.5, end - 0.5, color="#ffd966", alpha=0.35, zorder=0,
                       label=f"patch stage: {pp['layers']} layers, {pp['bands']} bands of {pp['rows']} rows")
        overlapped = [c["index"] for c in data.get("calls", []) if c.get("in_place")]
        for k, i in enumerate(overlapped):       # calls whose output lies over the input it consumed
            ax.axvline(i, color="#8172b3", linestyle=":", linewidth=0.8, zorder=0,
                       label=f"in place ({len(overlapped)} calls)" if k == 0 else None)
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
    pp = data.get("patch_plan")
    if pp:
        first, end = pp.get("stage_calls", [0, 0])
        parts.append(f"<p>Patch stage (shaded in the memory plan): the first {pp['layers']} window layers in "
                     f"{pp['bands']} bands of {pp['rows']} rows of {e(pp['stage_output'])} ({e(pp['shape'])}), calls "
                     f"{first}..{end - 1}, "
                     + (f"halo rows cached ({pp['bytes_copied']:,} B copied), {pp['extra_macs']:+,} MACs"
                        if pp.get("halo") in ("cached", "narrow") else f"{pp['extra_macs']:+,} MACs recomputed")
                     + (f"; arena {pp['arena_bytes_before']:,} B without patches" if "arena_bytes_before" in pp else "")
                     + "</p>")
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
                 + "<th>L1D misses</th><th>L1I misses</th><th>arena offset</th><th>size</th><th>in place</th></tr>")
    for c in data["calls"]:
        cache = c.get("cache", {})
        parts.append(f"<tr><td>{c['index']}</td><td>{e(c['name'])}</td><td>{e(c['kind'])}</td><td>{c['macs']:,}</td>"
                     + (f"<td>{c.get(key, 0):,}</td><td>{c.get('share', 0):.1%}</td>" if key else "")
                     + f"<td>{cache.get('l1d_misses', '')}</td><td>{cache.get('l1i_misses', '')}</td>"
                     f"<td>{c['arena_offset'] if c['arena_offset'] is not None else 'external'}</td>"
                     f"<td>{c['arena_size']:,}</td><td>{'yes' if c.get('in_place') else ''}</td></tr>")
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
    if "profile_unavailable" in data:
        lines.append(f"per-kernel costs: not measured ({data['profile_unavailable']})")
    if key:
        lines.append(f"per kernel ({data['profile']['unit']}):")
        for c in data["calls"]:
            cache = c.get("cache")
            extra = f"  L1D misses {cache['l1d_misses']:,}" if cache else ""
            lines.append(f"  {c['index']:3} {c['name'][:44]:44} {c.get(key, 0):>12,} {c.get('share', 0):6.1%}{extra}")
    return "\n".join(lines)
