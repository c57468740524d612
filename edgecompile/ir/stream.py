"""The graph input streamed into a patch stage, row band by row band (issue 13).

A patch stage (`patches.py`) reads its input through row-band views of the NHWC stage input,
which without streaming is the whole graph input, transposed in place in the arena: on
MobileNet V2 at 224x224 int8 that is 150,528 B, live until the stage's first layer has read its
last rows. Streamed, the input is never whole in RAM: each of those views becomes a buffer of its
own, filled just before its first reader by an `input_rows` builtin step that asks the runtime for
input rows [y0, y1) in NHWC order (`ec_read_input_rows`, see README "Streamed input"), as a camera
or a serial link delivers them. The graph input then has no storage in the arena.

A band's halo rows (the rows its first window reads that the band before also read) are asked
for again: the band buffers then never live together, and a source that cannot deliver a row
twice keeps its last rows itself (a camera driver's line buffer).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .program import DTYPE_BYTES, KernelCall, Program


@dataclass
class StreamedInput:
    """What report.json records under `patch_plan.input_rows`."""

    input: str                                  # the graph input that is streamed
    shape: list[int]                            # its shape (NCHW)
    row_bytes: int                              # bytes of one NHWC row (W x C elements)
    reads: list[list[int]] = field(default_factory=list)   # [y0, y1) of each read, in call order

    @property
    def rows_read(self) -> int:
        return sum(b - a for a, b in self.reads)

    @property
    def max_rows_held(self) -> int:
        return max((b - a for a, b in self.reads), default=0)

    def to_json(self) -> dict:
        return {"input": self.input, "shape": self.shape, "reads": len(self.reads), "rows_read": self.rows_read,
                "rows_per_image": self.shape[2], "max_rows_held": self.max_rows_held,
                "max_bytes_held": self.max_rows_held * self.row_bytes, "row_ranges": self.reads}


def stream_input(prog: Program) -> StreamedInput | None:
    """Rewrite `prog` in place so that its graph input is read row band by row band through
    `input_rows` steps instead of being stored whole; None (and `prog` unchanged) when it cannot
    be: not a single [1, C, H, W] input transposed in place for a patch stage, or some call
    reading it other than through full-width row bands of the transposed tensor."""
    if len(prog.inputs) != 1:
        return None
    name = prog.inputs[0]
    src = prog.tensors[name]
    transposes = [i for i, c in enumerate(prog.calls)
                  if c.builtin == "transpose_in_place" and c.inputs and c.inputs[0] == name]
    if len(src.shape) != 4 or src.shape[0] != 1 or len(transposes) != 1:
        return None
    _, ch, h, w = src.shape
    entry = prog.calls[transposes[0]].outputs[0]
    row_bytes = w * ch * DTYPE_BYTES[src.dtype]
    band_of: dict[str, tuple[int, int]] = {}
    for i, call in enumerate(prog.calls):
        if i == transposes[0]:
            continue
        for t in call.inputs + call.outputs:
            if prog.tensors[t].kind == "weight" or prog.storage_root(t) != name:
                continue
            view = prog.tensors[t]
            if t in call.outputs or view.alias_of != entry or len(view.shape) != 4 or \
                    tuple(view.shape[2:]) != (w, ch) or view.byte_offset % row_bytes or view.dtype != src.dtype:
                return None            # written, or not a row band of the transposed input
            y0 = view.byte_offset // row_bytes
            band_of[t] = (y0, y0 + view.shape[1])
    if not band_of:
        return None
    info = StreamedInput(name, list(src.shape), row_bytes)
    calls: list[KernelCall] = []
    fetched: set[str] = set()
    for i, call in enumerate(prog.calls):
        if i == transposes[0]:
            continue
        for t in dict.fromkeys(call.inputs):
            if t in band_of and t not in fetched:
                fetched.add(t)
                view = prog.tensors[t]
                view.alias_of, view.byte_offset = None, 0      # a buffer of its own
                y0, y1 = band_of[t]
                calls.append(KernelCall("ec_input_rows", [], [t], builtin="input_rows", rows=(y0, y1)))
                info.reads.append([y0, y1])
        calls.append(call)
    prog.calls[:] = calls
    prog.streamed.append(name)
    return info
