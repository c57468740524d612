"""Portable schedule steps shared by every target family."""

from __future__ import annotations

from typing import Any


def _children(sch: Any) -> list[Any]:
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def _is_reduction(sch: Any, block: Any) -> bool:
    return any(int(iv.iter_type) == 2 for iv in sch.get(block).iter_vars)


def inline_producers_and_epilogues(sch: Any, info: Any) -> None:
    """Inline padding / elementwise producers into their consumers and collapse the epilogue
    (bias, activation, residual add...) after the anchor into one block."""
    blocks = _children(sch)
    names = [sch.get(b).name_hint for b in blocks]
    if info.anchor is None:
        # Purely elementwise: everything but the final block is inlined into its consumers.
        for b in blocks[:-1]:
            _try(sch.compute_inline, b)
        return
    a = names.index(info.anchor)
    for b in blocks[:a]:
        if not _is_reduction(sch, b):
            _try(sch.compute_inline, b)
    after = blocks[a + 1:]
    # Intermediate epilogue blocks are inlined forward into their consumers, leaving one block
    # that writes the kernel output. (Forward inlining copes with diamonds such as SiLU,
    # x * sigmoid(x), where reverse inlining would have to read a removed buffer.)
    for b in after[:-1]:
        if _is_reduction(sch, b):
            break
        _try(sch.compute_inline, b)


def _try(fn: Any, *args: Any) -> bool:
    try:
        fn(*args)
        return True
    except Exception:  # noqa: BLE001 - TVM raises ScheduleError subclasses; keep the block
        return False


def epilogue_block(sch: Any, info: Any) -> Any | None:
    """The single epilogue block after the anchor, if any."""
    blocks = _children(sch)
    names = [sch.get(b).name_hint for b in blocks]
    if info.anchor not in names:
        return None
    a = names.index(info.anchor)
    return blocks[a + 1] if a + 1 < len(blocks) else None
