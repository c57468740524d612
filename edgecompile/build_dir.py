"""Build directories: what a build may replace, and replacing it atomically.

A build writes into a temporary directory next to its destination and moves it into place only
when everything succeeded, so a failed build never leaves a half-written directory. It replaces
only what it recognises as a previous build (the marker file `.edgecompile-build`, or a build
made before the marker existed), an empty directory, or anything with `force` — never the
current directory, one of its parents, the home directory or the root.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from .errors import EdgeCompileError

BUILD_MARKER = ".edgecompile-build"   # written into every build directory: only those may be replaced


def check_out_dir(out_dir: Path, force: bool = False) -> None:
    """Refuse an output path whose replacement would destroy something that is not a previous
    build: a directory without the build marker (unless empty), a regular file (unless `force`),
    and always the current directory, one of its parents, the home directory or the root."""
    out_dir = Path(out_dir)
    resolved = out_dir.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents or resolved == Path.home().resolve() or resolved == Path("/"):
        raise EdgeCompileError(f"--out {out_dir}: is the current directory, one of its parents, the home directory "
                               "or the root; a build replaces its output directory, give a new directory")
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        if not force:
            raise EdgeCompileError(f"--out {out_dir}: exists and is not a directory; refusing to replace it "
                                   "(choose another path, or --force to replace it)")
        return
    if out_dir.is_dir() and not force and not _is_build_dir(out_dir) and any(out_dir.iterdir()):
        raise EdgeCompileError(f"--out {out_dir}: exists and is not an edgecompile build directory (no {BUILD_MARKER}); "
                               "refusing to replace it (choose a new directory, or --force to replace it)")


def _is_build_dir(path: Path) -> bool:
    """A previous build: the marker, or (builds made before the marker existed) a report.json
    written by edgecompile next to model.c."""
    if (path / BUILD_MARKER).is_file():
        return True
    try:
        report = json.loads((path / "report.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and {"model_hash", "target", "calls"} <= set(report) and (path / "model.c").is_file()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _replace_dir(new: Path, dest: Path) -> None:
    old = None
    if dest.exists() or dest.is_symlink():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        dest.rename(old)
    new.rename(dest)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def write_atomically(out_dir: Path, fill: Callable[[Path], None], force: bool = False) -> None:
    """Call `fill(tmp)` on a fresh directory beside `out_dir`, mark it as a build, then replace
    `out_dir` with it; on any failure nothing but the temporary directory changed (and it goes)."""
    check_out_dir(out_dir, force)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        fill(tmp)
        tmp.chmod(0o777 & ~_umask())      # mkdtemp makes it 0700: a build is as readable as any directory
        check_out_dir(out_dir, force)      # nothing else appeared there meanwhile
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def mark_build(path: Path, info: dict) -> None:
    (path / BUILD_MARKER).write_text(json.dumps(info) + "\n")


def read_build(build: Path) -> dict[str, Any]:
    path = build / "report.json"
    if not path.is_file():
        raise EdgeCompileError(f"{build}: not a build directory (no report.json)")
    return json.loads(path.read_text())
