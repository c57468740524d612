"""Firmware: the generated model + a firmware template -> a linked program for a target, and
its measured footprint.

* `cortex_m`: bare metal. A linker script is generated from the target's memory map, so a model
  that does not fit fails at link time; we turn the linker's complaint into a `FitError` that
  names the region, what is needed and the budget. Boards that QEMU does not model are linked
  twice: `firmware.elf` for the real board and `firmware-emu.elf` relocated to the emulated
  machine (same budget, the emulated machine's UART and clock).
* `linux`: a static executable (`app`) that opens the serial device given on its command line.

Footprints come from the linked ELF files (section headers), never from estimates.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import toolchain
from .errors import FitError, ToolchainError
from .targets import Target

UART_DRIVERS = {"cmsdk": "EC_UART_CMSDK", "stm32_v1": "EC_UART_STM32_V1", "stm32_v2": "EC_UART_STM32_V2"}
COMMON_SOURCES = ["ec_protocol.c", "ec_device.c"]


# ----------------------------------------------------------------------------- ELF reading


@dataclass(frozen=True)
class Section:
    name: str
    addr: int
    size: int
    loads: bool      # occupies bytes in the image (PROGBITS), as opposed to NOBITS (.bss)
    alloc: bool


def elf_sections(path: Path) -> list[Section]:
    """Section headers of an ELF32/ELF64 little-endian file."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF":
        raise ToolchainError(f"{path}: not an ELF file")
    is64 = data[4] == 2
    if is64:
        shoff, = struct.unpack_from("<Q", data, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
        fmt = "<IIQQQQIIQQ"
    else:
        shoff, = struct.unpack_from("<I", data, 0x20)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x2E)
        fmt = "<IIIIIIIIII"
    headers = [struct.unpack_from(fmt, data, shoff + i * shentsize) for i in range(shnum)]
    str_off = headers[shstrndx][4]

    def name(off: int) -> str:
        end = data.index(b"\0", str_off + off)
        return data[str_off + off:end].decode()

    out = []
    for h in headers[1:]:
        sh_name, sh_type, sh_flags, sh_addr, _off, sh_size = h[:6]
        out.append(Section(name(sh_name), sh_addr, sh_size, sh_type != 8, bool(sh_flags & 0x2)))
    return out


def elf_symbol_table(path: Path) -> list[tuple[str, int, int, int, int]]:
    """Every symbol of the ELF symbol table: (name, value, size, st_info, st_shndx)."""
    data = path.read_bytes()
    is64 = data[4] == 2
    if is64:
        shoff, = struct.unpack_from("<Q", data, 0x28)
        shentsize, shnum, _ = struct.unpack_from("<HHH", data, 0x3A)
        fmt, symfmt, symsize = "<IIQQQQIIQQ", "<IBBHQQ", 24
    else:
        shoff, = struct.unpack_from("<I", data, 0x20)
        shentsize, shnum, _ = struct.unpack_from("<HHH", data, 0x2E)
        fmt, symfmt, symsize = "<IIIIIIIIII", "<IIIBBH", 16
    headers = [struct.unpack_from(fmt, data, shoff + i * shentsize) for i in range(shnum)]
    out = []
    for h in headers:
        if h[1] != 2:      # SHT_SYMTAB
            continue
        off, size, link = h[4], h[5], h[6]
        str_off = headers[link][4]
        for i in range(size // symsize):
            f = struct.unpack_from(symfmt, data, off + i * symsize)
            name_off, info, shndx, value, sz = (f[0], f[1], f[3], f[4], f[5]) if is64 else (f[0], f[3], f[5], f[1], f[2])
            end = data.index(b"\0", str_off + name_off)
            out.append((data[str_off + name_off:end].decode(errors="replace"), value, sz, info, shndx))
    return out


def elf_symbol(path: Path, name: str) -> int | None:
    """Address of a symbol from the ELF symbol table (None if absent)."""
    return next((value for n, value, *_ in elf_symbol_table(path) if n == name), None)


def footprint(path: Path, target: Target) -> dict[str, Any]:
    """Flash and RAM use of a linked program, by section and by memory region.

    flash_bytes: everything stored in the image (code, read-only data and weights, the initial
    values of .data); ram_bytes: data + bss + arena (the reserved stack is reported apart)."""
    sections = [s for s in elf_sections(path) if s.alloc and s.size]
    ram_regions = [r for r in target.memory if r.kind == "ram"]

    def in_ram(s: Section) -> bool:
        if ram_regions:
            return any(r.origin <= s.addr < r.origin + r.size for r in ram_regions)
        # a hosted (Linux) program: writable data, zero-initialised data and the arena
        return not s.loads or s.name.startswith((".data", ".tdata")) or s.name == "ec_arena_mem"

    flash = sum(s.size for s in sections if s.loads and s.name != "ec_arena_mem")
    ram = sum(s.size for s in sections if in_ram(s) and s.name != ".stack")
    regions = {}
    for r in target.memory:
        used = sum(s.size for s in sections if r.origin <= s.addr < r.origin + r.size)
        regions[r.name] = {"origin": r.origin, "size": r.size, "used": used}
    by_name = {s.name: s.size for s in sections}
    return {
        "flash_bytes": flash,
        "ram_bytes": ram,
        "arena_bytes": by_name.get(".ec_arena", by_name.get("ec_arena_mem", 0)),
        "stack_reserved_bytes": by_name.get(".stack", 0),
        "sections": by_name,
        "regions": regions,
    }


# ----------------------------------------------------------------------------- rendering


def render_board_header(target: Target) -> str:
    uart = target.uart
    driver = uart.get("driver")
    if driver not in UART_DRIVERS:
        raise ToolchainError(f"{target.source}: uart.driver must be one of {', '.join(UART_DRIVERS)}, got {driver!r}")
    lines = [f"/* Generated by edgecompile for target '{target.name}'. */", "#ifndef EC_BOARD_H", "#define EC_BOARD_H"]
    for macro in UART_DRIVERS.values():
        lines.append(f"#define {macro} {1 if macro == UART_DRIVERS[driver] else 0}")
    lines += [
        f"#define EC_UART_BASE 0x{int(uart['base']):08X}u",
        f"#define EC_UART_CLOCK_HZ {int(uart.get('clock_hz', target.clock_hz))}u",
        f"#define EC_UART_BAUD {int(uart.get('baud', 115200))}u",
        f"#define EC_UART_RCC {', '.join('{0x%08Xu, %du}' % (r, b) for r, b in uart.get('rcc', [])) or '{0, 0}'}",
        f"#define EC_UART_PINS {', '.join('{0x%08Xu, %du, %du}' % tuple(p) for p in uart.get('pins', [])) or '{0, 0, 0}'}",
        f"#define EC_CPU_HZ {target.clock_hz}u",
        f"#define EC_HAS_FPU {1 if any(f.startswith(('fp', 'mve')) for f in target.features) else 0}",
        f"#define EC_ENABLE_ICACHE {1 if target.enable_icache else 0}",
        "#endif",
    ]
    return "\n".join(lines) + "\n"


def render_info_header(report: dict[str, Any], target: Target, variant: str) -> str:
    info = {
        "model": report["model"],
        "model_hash": report["model_hash"],
        "target": target.name,
        "variant": variant,
        "build_id": f"{report['model_hash']}-{target.name}-{variant}",
        "input_shape": report["inputs"][0]["shape"],
        "input_dtype": report["inputs"][0]["dtype"],
        "output_shape": report["outputs"][0]["shape"],
        "output_dtype": report["outputs"][0]["dtype"],
    }
    text = json.dumps(info, separators=(",", ":"))[:-1]   # the device appends measured fields
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return (f"/* Generated by edgecompile: what INFO reports before the measured fields. */\n"
            f'#define EC_INFO_JSON "{escaped}"\n')


def render_linker_script(target: Target) -> str:
    def region(role: str) -> str:
        return target.region_for(role).name

    text, weights = region("text"), region("weights")
    lines = [f"/* Generated by edgecompile for target '{target.name}' from its memory map. */", "MEMORY", "{"]
    for r in target.memory:
        attrs = "rx" if r.kind == "flash" else "rwx"
        lines.append(f"  {r.name} ({attrs}) : ORIGIN = 0x{r.origin:08X}, LENGTH = {r.size}")
    lines += ["}", "", "ENTRY(Reset_Handler)", f"__ec_stack_size = {target.stack_bytes};", "", "SECTIONS", "{"]
    if weights != text:   # listed first so that it claims the weights before .text's wildcard
        lines += ["  .ec_weights : ALIGN(16) { *(.rodata.ec_weights*) } > " + weights]
    lines += [
        "  .text : ALIGN(4)",
        "  {",
        "    KEEP(*(.vectors))",
        "    *(.text*)",
        "    *(.rodata.ec_weights*)" if weights == text else "",
        "    *(.rodata*)",
        "    KEEP(*(.init)) KEEP(*(.fini))",
        "    . = ALIGN(4);",
        f"  }} > {text}",
        f"  .ARM.exidx : {{ *(.ARM.exidx* .gnu.linkonce.armexidx.*) }} > {text}",
        "  .init_array : { KEEP(*(.init_array*)) } > " + text,
        "  .fini_array : { KEEP(*(.fini_array*)) } > " + text,
        "  .data : ALIGN(4)",
        "  {",
        "    _sdata = .;",
        "    *(.data*)",
        "    . = ALIGN(4);",
        "    _edata = .;",
        f"  }} > {region('data')} AT > {text}",
        "  _sidata = LOADADDR(.data);",
        "  .bss (NOLOAD) : ALIGN(4)",
        "  {",
        "    _sbss = .;",
        "    *(.bss*) *(COMMON)",
        "    . = ALIGN(4);",
        "    _ebss = .;",
        f"  }} > {region('bss')}",
        "  .ec_arena (NOLOAD) : ALIGN(16)",
        "  {",
        "    __ec_arena_start = .;",
        "    KEEP(*(.ec_arena))",
        "    __ec_arena_end = .;",
        f"  }} > {region('arena')}",
        "  .stack (NOLOAD) : ALIGN(8)",
        "  {",
        "    __ec_stack_bottom = .;",
        "    . = . + __ec_stack_size;",
        "    __ec_stack_top = .;",
        f"  }} > {region('stack')}",
        "  end = __ec_stack_top;",
        "}",
    ]
    return "\n".join(line for line in lines if line != "") + "\n"


# ----------------------------------------------------------------------------- building

_OVERFLOW = re.compile(r"region `([^']+)' overflowed by (\d+) bytes")


def _link(cc: str, flags: list[str], objects: list[str], script: str, out: str, build: Path,
          libs: list[str] = ()) -> subprocess.CompletedProcess:
    """Link; `libs` (the target's ldflags: -lm, specs) go after the objects that need them."""
    cmd = [cc, *flags, "-T", script, "-o", out, *objects, *libs, "-Wl,-Map," + out + ".map"]
    return subprocess.run(cmd, cwd=build, capture_output=True, text=True)


def _fit_error(target: Target, stderr: str, needs: dict[str, int]) -> FitError:
    parts = []
    for name, over in _OVERFLOW.findall(stderr):
        r = next(r for r in target.memory if r.name == name)
        need = needs.get(name, r.size + int(over))
        parts.append(f"{name} needs {need:,} B, budget {r.size:,} B ({r.kind}, over by {int(over):,} B)")
    return FitError(f"model does not fit {target.name}: " + "; ".join(parts))


def _measure_needs(target: Target, cc: str, flags: list[str], objects: list[str], build: Path,
                   libs: list[str] = ()) -> dict[str, int]:
    """Link once more with every region 256 MB large to learn what each one would need."""
    from dataclasses import replace

    roomy = replace(target, memory=tuple(replace(r, size=1 << 28) for r in target.memory))
    spread = []
    base = 0x10000000
    for i, r in enumerate(roomy.memory):   # non-overlapping addresses for the measuring link
        spread.append(replace(r, origin=base + i * (1 << 28)))
    roomy = replace(roomy, memory=tuple(spread))
    (build / "measure.ld").write_text(render_linker_script(roomy))
    proc = _link(cc, flags, objects, "measure.ld", "measure.elf", build, list(libs))
    if proc.returncode != 0:
        return {}
    fp = footprint(build / "measure.elf", roomy)
    return {name: v["used"] for name, v in fp["regions"].items()}


def build_cortex_m(build: Path, target: Target, report: dict[str, Any], weights_src: str,
                   templates: Path, progress: Callable[[str], None]) -> dict[str, Any]:
    cc = target.cc
    toolchain.require(cc, "install gcc-arm-none-eabi (make setup)")
    flags = list(target.cflags)
    for name in COMMON_SOURCES:
        shutil.copy(templates / "common" / name, build / name)
    shutil.copy(templates / "common" / "ec_protocol.h", build / "ec_protocol.h")
    shutil.copy(templates / "common" / "ec_hal.h", build / "ec_hal.h")
    for name in ("startup.c", "hal_cortex_m.c"):
        shutil.copy(templates / "cortex_m" / name, build / name)
    defs = ['-DEC_ARENA_ATTR=__attribute__((section(".ec_arena")))', "-DEC_PROFILE", "-I."]
    variants = [("board", target, "firmware")]
    if target.emulated_elsewhere:
        variants.append(("emu", target.for_emulator(), "firmware-emu"))
    progress(f"compiling the model with {cc}")
    model_objs = []
    for src in ("model.c", weights_src):
        obj = src.rsplit(".", 1)[0] + ".o"
        toolchain.run([cc, *flags, *defs, "-c", src, "-o", obj], build, f"{cc}: compiling {src}")
        model_objs.append(obj)
    results = {}
    for variant, t, stem in variants:
        sub = f"{stem}-objs"
        (build / sub).mkdir(exist_ok=True)
        (build / sub / "ec_board.h").write_text(render_board_header(t))
        (build / sub / "ec_build_info.h").write_text(render_info_header(report, t, variant))
        objs = list(model_objs)
        for src in [*COMMON_SOURCES, "startup.c", "hal_cortex_m.c"]:
            obj = f"{sub}/{src[:-2]}.o"
            toolchain.run([cc, *flags, *defs, f"-I{sub}", "-c", src, "-o", obj], build,
                          f"{cc}: compiling {src}")
            objs.append(obj)
        script = f"{stem}.ld"
        (build / script).write_text(render_linker_script(t))
        progress(f"linking {stem}.elf for {t.name} ({variant})")
        proc = _link(cc, flags, objs, script, f"{stem}.elf", build, list(target.ldflags))
        if proc.returncode != 0:
            if _OVERFLOW.search(proc.stderr):
                raise _fit_error(t, proc.stderr, _measure_needs(t, cc, flags, objs, build, list(target.ldflags)))
            lines = [ln for ln in proc.stderr.splitlines() if "collect2" not in ln]
            first = next((ln for ln in lines if "error" in ln.lower() or "undefined" in ln), proc.stderr.strip()[:300])
            raise ToolchainError(f"{cc}: linking {stem}.elf failed: {first}")
        results[variant] = {"elf": f"{stem}.elf", **footprint(build / f"{stem}.elf", t)}
    for p in build.glob("measure.*"):
        p.unlink()
    return results


def build_linux(build: Path, target: Target, report: dict[str, Any], weights_src: str, templates: Path,
                progress: Callable[[str], None]) -> dict[str, Any]:
    cc = target.cc
    toolchain.require(cc, "install gcc-aarch64-linux-gnu and libc6-dev-arm64-cross (make setup)")
    for name in COMMON_SOURCES:
        shutil.copy(templates / "common" / name, build / name)
    for name in ("ec_protocol.h", "ec_hal.h"):
        shutil.copy(templates / "common" / name, build / name)
    shutil.copy(templates / "linux" / "hal_linux.c", build / "hal_linux.c")
    (build / "ec_build_info.h").write_text(render_info_header(report, target, "linux"))
    defs = ['-DEC_ARENA_ATTR=__attribute__((section("ec_arena_mem")))', "-DEC_PROFILE", "-I."]
    progress(f"compiling and linking app with {cc}")
    srcs = ["model.c", weights_src, *COMMON_SOURCES, "hal_linux.c"]
    toolchain.run([cc, *target.cflags, *defs, "-o", "app", *srcs, *target.ldflags], build, f"{cc}: building app")
    return {"linux": {"elf": "app", "mark_address": elf_symbol(build / "app", "ec_hal_mark"),
                      **footprint(build / "app", target)}}


def build_firmware(build: Path, target: Target, report: dict[str, Any], weights_src: str, templates: Path,
                   progress: Callable[[str], None]) -> dict[str, Any]:
    if target.firmware == "cortex_m":
        return build_cortex_m(build, target, report, weights_src, templates, progress)
    if target.firmware == "linux":
        return build_linux(build, target, report, weights_src, templates, progress)
    raise ToolchainError(f"{target.source}: unknown firmware template {target.firmware!r}")
