"""Tuning records: what `edgecompile tune` measured, as `build` reads it.

One MetaSchedule JSON database per target, `<db>/<target>/`, keyed by the kernel's workload
(structural hash of its PrimFunc). Each record's trace carries the configuration as an
annotation of the root block (`ec.config`), so `build` re-applies our rule with it.
"""

from __future__ import annotations

import json
import os
import re
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..paths import cache_dir
from ..errors import EdgeCompileError
from ..targets import Target

CONFIG_KEY = "ec.config"
# per target directory: the verdicts of tuned kernels timed inside their network (tune/validate.py)
IN_NETWORK = "in_network.json"


def _ms() -> Any:
    # MetaSchedule's TuneContext imports tvm.s_tir.tensor_intrin (~80 s here: CUDA/Hexagon/x86
    # intrinsics) that our schedules never use; an empty module stands in for it.
    sys.modules.setdefault("tvm.s_tir.tensor_intrin", types.ModuleType("tvm.s_tir.tensor_intrin"))
    import logging

    # MetaSchedule's console log (task tables on stdout) sets its level from this logger's; the
    # full log still goes to the work directory. Our own progress line replaces it.
    ms_log = logging.getLogger("tvm.s_tir.meta_schedule")
    ms_log.setLevel(logging.DEBUG if os.environ.get("EDGECOMPILE_MS_LOG") else logging.WARNING)
    from tvm.s_tir import meta_schedule as ms

    return ms


def default_db() -> Path:
    env = os.environ.get("EDGECOMPILE_TUNING_DB")
    return Path(env) if env else cache_dir("tuning")


def workload(func: Any) -> Any:
    """The IRModule MetaSchedule keys a kernel's records by."""
    _ms()
    from tvm.s_tir.meta_schedule.tune_context import _normalize_mod

    return _normalize_mod(func)


def workload_key(func: Any) -> str:
    """A kernel's key in IN_NETWORK: the structural hash of its workload, as hex."""
    import tvm_ffi

    return f"{tvm_ffi.structural_hash(workload(func)) & (2**64 - 1):016x}"


def _register_intrinsics(text: str) -> None:
    """Register every micro-kernel intrinsic `text` (a trace or a database file) names: the JSON
    database replays every stored trace when it opens."""
    from ..schedules import ukernels

    for name in sorted(set(re.findall(r"ec_(?:gemm|gemmw|dw|window)_[a-z0-9_]+", text))):
        m = re.fullmatch(r"ec_gemmw_([a-z0-9]+)_(\d+)x(\d+)_w(\d+)c(\d+)_s(\d+)(?:_p(\d+))?", name)
        if m and m[1] in ukernels.TYPES:
            ukernels.gemm_window_intrin(*(int(m[i]) for i in range(2, 7)), ukernels.TYPES[m[1]], int(m[7] or 0))
            continue
        m = re.fullmatch(r"ec_gemmw_([a-z0-9]+)_(\d+)x(\d+)_h(\d+)w(\d+)c(\d+)_s(\d+)", name)
        if m and m[1] in ukernels.TYPES:
            ukernels.gemm_full_window_intrin(*(int(m[i]) for i in range(2, 8)), ukernels.TYPES[m[1]])
            continue
        m = re.fullmatch(r"ec_gemm_([a-z0-9]+)_(\d+)x(\d+)_k(\d+)_s(\d+)(_a8)?(?:_p(\d+))?", name)
        if m and m[1] in ukernels.TYPES:
            ukernels.gemm_intrin(int(m[2]), int(m[3]), int(m[4]), int(m[5]), ukernels.TYPES[m[1]], bool(m[6]),
                                 int(m[7] or 0))
            continue
        m = re.fullmatch(r"ec_dw_(f32|s8|s16)_(\d+)x(\d+)_k(\d+)x(\d+)s(\d+)(?:_p(\d+))?", name)
        if m:
            ukernels.dw_intrin(*(int(m[i]) for i in range(2, 7)), ukernels.TYPES[m[1]], int(m[7] or 0))
            continue
        m = re.fullmatch(r"ec_window_(f32|s8|s16)_(\d+)x(\d+)_k(\d+)x(\d+)c(\d+)s(\d+)", name)
        if m:
            ukernels.window_intrin(*(int(m[i]) for i in range(2, 8)), ukernels.TYPES[m[1]])


def db_key(target: Target) -> str:
    """The database directory of a target: its name, plus the schedule family's variant when the
    family adapts to the machine (host: avx2 / avx512), since the tiles differ."""
    from ..schedules import family

    variant = getattr(family(target.family), "VARIANT", "")
    return f"{target.name}-{variant}" if variant else target.name


def open_database(db: Path, target: Target) -> Any:
    ms = _ms()
    d = db / db_key(target)
    d.mkdir(parents=True, exist_ok=True)
    records = d / "database_tuning_record.json"
    for attempt in range(3):     # a tune running beside us may append records between the reads
        if records.exists():
            _register_intrinsics(records.read_text())
        try:
            return ms.database.JSONDatabase(path_workload=str(d / "database_workload.json"),
                                            path_tuning_record=str(records))
        except Exception as err:  # noqa: BLE001 - a corrupt file: say which
            if attempt == 2:
                raise EdgeCompileError(f"cannot read the tuning database {d}: "
                                       f"{str(err).strip().splitlines()[-1]}") from None
    raise AssertionError("unreachable")


def config_of(trace: Any) -> dict | None:
    """The configuration a record's trace annotated on the root block (None: not one of ours)."""
    for inst in trace.insts:
        if inst.kind.name == "Annotate" and tuple(inst.attrs) == (CONFIG_KEY,):
            return json.loads(str(inst.inputs[1]))
    return None


@dataclass
class TuningRecords:
    """What `build` consults: the best measured configuration of each kernel, if any, unless
    (`in_network`) the kernel timed inside its network was not faster with it than with the rule's
    own schedule (IN_NETWORK, written by tune/validate.py): those are in `set_aside`. `keys` holds
    the workload key of each kernel in `hits` (what tune/validate.py files its verdicts under)."""

    db: Path
    target: Target
    in_network: bool = True
    hits: dict[str, dict] = field(default_factory=dict)
    set_aside: dict[str, dict] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    _database: Any = None
    _verdicts: dict | None = None

    def config_for(self, func: Any, name: str = "") -> dict | None:
        if self._database is None:
            if not (self.db / db_key(self.target) / "database_tuning_record.json").exists():
                return None
            self._database = open_database(self.db, self.target)
            verdicts = self.db / db_key(self.target) / IN_NETWORK
            self._verdicts = json.loads(verdicts.read_text()) if self.in_network and verdicts.exists() else {}
        mod = workload(func)
        if not self._database.has_workload(mod):
            return None
        top = self._database.get_top_k(self._database.commit_workload(mod), 1)
        if not top or not top[0].run_secs or float(top[0].run_secs[0]) >= 1e9:
            return None
        cfg = config_of(top[0].trace)
        key = workload_key(func)
        verdict = (self._verdicts or {}).get(key)
        if cfg is not None and verdict is not None and not verdict["kept"] and verdict.get("config") == cfg:
            if name:
                self.set_aside[name] = cfg
            return None
        if cfg is not None and name:
            self.hits[name] = cfg
            self.keys[name] = key
        return cfg
