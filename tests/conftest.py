"""Shared fixtures: builds are cached per test session, keyed by model and options."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest

# builds through the CLI consult the default tuning database: never the user's during tests
os.environ["EDGECOMPILE_TUNING_DB"] = tempfile.mkdtemp(prefix="ec-test-tuning-")
# nor the user's object cache: one of this session's own (builds of the same model share objects),
# removed at the end
os.environ["EDGECOMPILE_OBJECT_CACHE"] = tempfile.mkdtemp(prefix="ec-test-objects-")
atexit.register(shutil.rmtree, os.environ["EDGECOMPILE_OBJECT_CACHE"], True)
# under pytest-xdist (make test: one worker per core) each worker, and every training or build it
# starts, computes on one thread: torch's and TVM's default pools of one thread per core made two
# workers run four threads on two cores (the digits training fixture: 170 s loaded, 24 s alone)
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("TVM_NUM_THREADS", "1")

from edgecompile.ir.frontend import ModelOptions, load_model
from edgecompile.compiler import BuildOptions, Progress, write_build
from edgecompile.targets import load_target



@pytest.fixture(scope="session")
def build_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("builds")
    cache: dict = {}

    def get(model: str, target: str = "host", external_io: bool = False, quant: str | None = None,
            calibration: str = "digits", **opts):
        key = (model, target, external_io, quant, calibration, tuple(sorted(opts.items())))
        if key not in cache:
            source = load_model(model, ModelOptions(**opts))
            out = root / f"b{len(cache)}-{source.name}-{target}"
            report = write_build(source, load_target(target), out,
                                 BuildOptions(external_io=external_io, quant=quant, calibration=calibration,
                                              compare_unfused=False),
                                 Progress(quiet=True))
            cache[key] = (source, out, report)
        return cache[key]

    return get


