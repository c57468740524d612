"""Reading linked programs: ELF sections and symbols, and the footprint they measure (flash and
RAM by section and by memory region). Footprints always come from the linked file, never from
estimates."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ToolchainError
from ..targets import Target

SHT_SYMTAB, SHT_NOBITS, SHF_ALLOC = 2, 8, 0x2


@dataclass(frozen=True)
class Section:
    name: str
    addr: int
    size: int
    loads: bool      # occupies bytes in the image (PROGBITS), as opposed to NOBITS (.bss)
    alloc: bool


@dataclass(frozen=True)
class _Header:
    name: int        # offset in the section-name string table
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int


def _headers(data: bytes, path: Path) -> tuple[list[_Header], bool]:
    """Section headers of an ELF32/ELF64 little-endian file, and whether it is ELF64."""
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
    raw = [struct.unpack_from(fmt, data, shoff + i * shentsize) for i in range(shnum)]
    headers = [_Header(h[0], h[1], h[2], h[3], h[4], h[5], h[6]) for h in raw]
    return headers + [headers[shstrndx]], is64     # the last entry: the name string table


def _cstr(data: bytes, offset: int) -> str:
    return data[offset:data.index(b"\0", offset)].decode(errors="replace")


def elf_sections(path: Path) -> list[Section]:
    data = path.read_bytes()
    headers, _ = _headers(data, path)
    names = headers.pop()
    return [Section(_cstr(data, names.offset + h.name), h.addr, h.size, h.type != SHT_NOBITS, bool(h.flags & SHF_ALLOC))
            for h in headers[1:]]


def elf_symbol_table(path: Path) -> list[tuple[str, int, int, int, int]]:
    """Every symbol of the ELF symbol table: (name, value, size, st_info, st_shndx)."""
    data = path.read_bytes()
    headers, is64 = _headers(data, path)
    headers.pop()
    symfmt, symsize = ("<IBBHQQ", 24) if is64 else ("<IIIBBH", 16)
    out = []
    for h in headers:
        if h.type != SHT_SYMTAB:
            continue
        strings = headers[h.link].offset
        for i in range(h.size // symsize):
            f = struct.unpack_from(symfmt, data, h.offset + i * symsize)
            name_off, info, shndx, value, sz = (f[0], f[1], f[3], f[4], f[5]) if is64 else (f[0], f[3], f[5], f[1], f[2])
            out.append((_cstr(data, strings + name_off), value, sz, info, shndx))
    return out


def elf_symbol(path: Path, name: str) -> int | None:
    """Address of a symbol from the ELF symbol table (None if absent)."""
    return next((value for n, value, *_ in elf_symbol_table(path) if n == name), None)


def elf_symbols(path: Path) -> list[dict[str, Any]]:
    """Defined, sized FUNC/OBJECT symbols: name, address, size, type. Compiler clones keep the
    function's name before the first dot (f.constprop.0, f.isra.0 are f)."""
    out = []
    for name, value, sz, info, shndx in elf_symbol_table(path):
        kind = info & 0xF
        if kind not in (1, 2) or shndx == 0 or sz == 0:     # OBJECT, FUNC; defined; sized
            continue
        out.append({"name": name.split(".")[0] if not name.startswith(".") else name, "address": value & ~1,
                    "size": sz, "type": "func" if kind == 2 else "object"})
    return out


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
