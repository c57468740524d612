"""Schedules for the development host (x86-64: AVX2 / AVX-512 through 8-lane vectors)."""

from __future__ import annotations

from typing import Any

from . import generic

LANES = 8          # 32-byte vectors (AVX2; AVX-512 machines run them too)
ACCUMULATORS = 12  # of 16 vector registers: the rest hold B rows and the broadcast A value


def schedule_conv(sch: Any, info: Any) -> bool:
    if info.kind not in ("conv", "conv_pw"):
        return False
    return generic.tile_conv_gemm(sch, info, LANES, ACCUMULATORS)


def schedule_depthwise(sch: Any, info: Any) -> bool:
    return generic.tile_depthwise(sch, info, LANES, 8)


def schedule_dense(sch: Any, info: Any) -> bool:
    return generic.tile_dense(sch, info, LANES, 4)


def schedule_pool(sch: Any, info: Any) -> bool:
    return False


def schedule_elementwise(sch: Any, info: Any) -> bool:
    return False
