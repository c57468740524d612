"""Running a host build in this process (ctypes) or through its runner executable."""

from __future__ import annotations

import ctypes
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .errors import EdgeCompileError


class HostModel:
    """A compiled host build loaded with ctypes. Each instance loads its own copy of the library,
    so several builds (or rebuilds of one directory) can be used in one process."""

    def __init__(self, build_dir: str | Path) -> None:
        self.dir = Path(build_dir)
        report_path = self.dir / "report.json"
        lib_path = self.dir / "libmodel.so"
        if not report_path.is_file() or not lib_path.is_file():
            raise EdgeCompileError(f"{self.dir}: not a host build (missing report.json or libmodel.so)")
        self.report = json.loads(report_path.read_text())
        self._tmp = tempfile.TemporaryDirectory(prefix="ec-lib-")
        private = Path(self._tmp.name) / "libmodel.so"
        shutil.copyfile(lib_path, private)
        self.lib = ctypes.CDLL(str(private))
        self.lib.ec_model_run_multi.restype = ctypes.c_int
        self.inputs = [(tuple(t["shape"]), t["dtype"]) for t in self.report["inputs"]]
        self.outputs = [(tuple(t["shape"]), t["dtype"]) for t in self.report["outputs"]]

    def run(self, *inputs: np.ndarray) -> list[np.ndarray]:
        if len(inputs) != len(self.inputs):
            raise EdgeCompileError(f"model takes {len(self.inputs)} input(s), got {len(inputs)}")
        ins = []
        for x, (shape, dtype) in zip(inputs, self.inputs):
            x = np.asarray(x)
            if x.size != int(np.prod(shape)):
                raise EdgeCompileError(f"input has shape {x.shape}, the model expects {shape}")
            ins.append(np.ascontiguousarray(x, dtype=dtype).reshape(shape))
        outs = [np.zeros(shape, dtype=dtype) for shape, dtype in self.outputs]
        in_arr = (ctypes.c_void_p * len(ins))(*[a.ctypes.data for a in ins])
        out_arr = (ctypes.c_void_p * len(outs))(*[a.ctypes.data for a in outs])
        rc = self.lib.ec_model_run_multi(in_arr, out_arr)
        if rc != 0:
            raise EdgeCompileError(f"ec_model_run failed at kernel call {rc}")
        return outs

    def close(self) -> None:
        self._tmp.cleanup()
