"""Schedules for the development host (x86-64 with AVX2, or any other host)."""

from __future__ import annotations

from typing import Any


def schedule_conv(sch: Any, info: Any) -> None:
    pass


def schedule_depthwise(sch: Any, info: Any) -> None:
    pass


def schedule_dense(sch: Any, info: Any) -> None:
    pass


def schedule_pool(sch: Any, info: Any) -> None:
    pass


def schedule_elementwise(sch: Any, info: Any) -> None:
    pass
