"""Cortex-M55 micro-kernels that override the generic ones: the DSP extension's integer GEMM and
depthwise kernels of Cortex-M4/M7 (the M55 has the DSP extension; each keeps its portable C under
`#else`, so the same model.c runs on the host)."""

from ..cortex_m.ukernels import dw, gemm

__all__ = ["dw", "gemm"]
