"""What one fused TIR kernel computes: its kind, its anchor (the reduction block), its shape facts
and multiply-accumulate count. `analyze` reads them off the PrimFunc; the operator registry says
which operator made each reduction block, so an unknown reduction is an error, not a guess."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import UnsupportedModelError
from .operators import Kind, reduction_anchor

SPATIAL, REDUCTION = 0, 2      # TIR iter types


@dataclass
class KernelInfo:
    kind: Kind
    macs: int                          # multiply-accumulates (conv, fc); 0 otherwise
    anchor: str | None                 # name of the reduction block, if any
    ops: list[str] = field(default_factory=list)   # all block names, in order
    kernel: tuple[int, int] = (1, 1)   # conv window
    stride: tuple[int, int] = (1, 1)
    channels: tuple[int, int] = (0, 0)  # (in per group, out) for conv/fc
    schedule: str = ""                 # which schedule rule ran
    note: str = ""                     # why a rule fell back, if it did
    dw_anchor: str | None = None       # dwpw: the depthwise reduction block
    dw_channels: int = 0               # dwpw: channels of the depthwise part
    out_rows: int = 0                  # output height (rows of the NHWC output)
    rows: int = 0                      # dwpw, depthwise: output rows per tile of the tiled schedule (0: untiled)
    packed: dict = field(default_factory=dict)   # weight parameter position -> output-channel panel width
    panel_order: dict = field(default_factory=dict)   # weight parameter position -> order within a panel
    rescale: dict = field(default_factory=dict)   # rnd weight position -> (m0, r positions): constants re-encoded
    rescale_kernel: bool = True        # a family may hand rescale tiles to a kernel over re-encoded constants

    def describe(self) -> str:
        (kh, kw), (sh, _) = self.kernel, self.stride
        if self.kind == Kind.DWPW:
            return f"{self.kind} {kh}x{kw}/{sh} dw {self.dw_channels} -> pw {self.channels[1]}"
        if self.kind.is_conv:
            return f"{self.kind} {kh}x{kw}/{sh} {self.channels[0]}->{self.channels[1]}"
        return str(self.kind)

    @property
    def path(self) -> str:
        """How the kernel runs, for the report."""
        if self.kind == Kind.CONV_DW and self.rows:
            return "depthwise, output row by output row"
        if self.kind != Kind.DWPW:
            return "single kernel"
        return f"fused depthwise+pointwise, {self.rows} output rows per tile" if self.rows else \
            "fused depthwise+pointwise, untiled"

    @property
    def streams_rows(self) -> bool:
        """A kernel tiled by output rows (fused depthwise+pointwise, or a standalone depthwise
        tiled row by row): it reads only the input rows of a tile's window while it writes that
        tile's output rows, top to bottom, so its output may overlap the input rows it has
        consumed (in-place planning)."""
        return self.kind in (Kind.DWPW, Kind.CONV_DW) and self.rows > 0

    @property
    def interleaves_rows(self) -> bool:
        """Within one row tile, reads of the tile's input window and writes of its output rows
        interleave: a standalone depthwise writes an output row pixel tile by channel tile, and
        reads the window (all of it, or one channel tile's part with the "channels" order, or
        straight from the input when it has no padding) between those writes. The fused kernel
        computes its whole depthwise row tile before it writes."""
        return self.kind == Kind.CONV_DW

def _iter_extents(block: Any) -> list[tuple[int, int]]:
    """(iter type, extent) of a block."""
    return [(int(iv.iter_type), int(iv.dom.extent)) for iv in block.iter_vars]


def _product(extents: list[tuple[int, int]]) -> int:
    total = 1
    for _, e in extents:
        total *= e
    return total


def root_blocks(func: Any) -> list[Any]:
    """The blocks under a PrimFunc's root block, in order ([] for a function without one)."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    try:
        root = sch.get_sblock("root")
    except Exception:  # noqa: BLE001 - a function without a root block
        return []
    return [sch.get(b) for b in sch.get_child_blocks(root)]


def analyze(func: Any, name: str = "") -> KernelInfo:
    blocks = root_blocks(func)
    names = [b.name_hint for b in blocks]
    reductions = [b for b in blocks if any(t == REDUCTION for t, _ in _iter_extents(b))]
    if not reductions:
        return KernelInfo(Kind.ELEMENTWISE, 0, None, names)
    anchors = []
    for r in reductions:
        anchor = reduction_anchor(r.name_hint)
        if anchor is None:
            raise UnsupportedModelError(
                f"kernel {name or '(unnamed)'}: reduction block '{r.name_hint}' comes from no registered operator "
                "(edgecompile/ir/operators.py)")
        anchors.append(anchor)
    if len(reductions) == 2 and anchors == ["conv", "conv"]:
        first, second = _conv(reductions[0]), _conv(reductions[1])
        if first[0] == Kind.CONV_DW and second[0] == Kind.CONV_PW and second[3] == (1, 1):
            info = KernelInfo(Kind.DWPW, first[1] + second[1], reductions[1].name_hint, names, first[2], first[3],
                              second[4], dw_anchor=reductions[0].name_hint, dw_channels=first[4][1])
            info.out_rows = _spatial(reductions[1])[1]
            return info
    anchor, block = anchors[0], reductions[0]
    if anchor == "conv":
        kind, macs, kernel, stride, channels = _conv(block)
        info = KernelInfo(kind, macs, block.name_hint, names, kernel, stride, channels)
        info.out_rows = _spatial(block)[1]
        return info
    extents = _iter_extents(block)
    if anchor == "matmul":
        sp = [e for t, e in extents if t == SPATIAL]
        red = [e for t, e in extents if t == REDUCTION]
        return KernelInfo(Kind.FC, _product(extents), block.name_hint, names, channels=(red[0], sp[-1]))
    if anchor == "pool":
        return KernelInfo(Kind.POOL, 0, block.name_hint, names)
    return KernelInfo(Kind.MEAN if _sums(block) else Kind.REDUCE, 0, block.name_hint, names)


def _sums(block: Any) -> bool:
    """Whether a reduction block accumulates with + (a sum or mean, not a max or min)."""
    from tvm import tirx

    body = block.body
    while isinstance(body, tirx.SeqStmt):
        body = body.seq[-1]
    return isinstance(body, tirx.BufferStore) and isinstance(body.value, tirx.Add)


def _spatial(block: Any) -> list[int]:
    return [e for t, e in _iter_extents(block) if t == SPATIAL]


def _conv(block: Any) -> tuple[Kind, int, tuple[int, int], tuple[int, int], tuple[int, int]]:
    """(kind, MACs, kernel, stride, (in channels per group, out channels)) of an NHWC conv block."""
    name = block.name_hint
    extents = _iter_extents(block)
    sp = [e for t, e in extents if t == SPATIAL]
    red = [e for t, e in extents if t == REDUCTION]
    kh, kw, cin_g = red[0], red[1], red[2]
    cout = sp[-1]
    if name.startswith("group_conv2d"):
        kind = Kind.CONV_DW if cin_g == 1 else Kind.CONV_GROUP
    elif kh == 1 and kw == 1:
        kind = Kind.CONV_PW
    else:
        kind = Kind.CONV
    return kind, _product(extents), (kh, kw), _conv_stride(block), (cin_g, cout)


def _conv_stride(block: Any) -> tuple[int, int]:
    """Read the stride from the input index expression `h * s + kh` of the conv block."""
    for region in block.reads:
        idx = [str(r.min) for r in region.region]
        if len(idx) == 4:
            strides = []
            for e in idx[1:3]:
                m = re.search(r"\* T\.int64\((\d+)\)|\* (\d+)", e)
                strides.append(int(m.group(1) or m.group(2)) if m else 1)
            if any("v_" in e for e in idx[1:3]):
                return strides[0], strides[1]
    return (1, 1)
