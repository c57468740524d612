"""Another revision of this repository, to measure beside this tree in the same run: its files
(`git archive`) in a temporary directory, and the environment under which a child process of this
interpreter imports that revision's package ahead of this tree's.

The installed (editable) package maps two subpackages, `edgecompile.firmware_templates` and
`edgecompile.target_files`, to this tree's directories; the revision's own are linked into its
package so that its builds use its templates and board files, not ours."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def baseline_tree(rev: str) -> Iterator[tuple[Path, dict[str, str]]]:
    """(directory of revision `rev`, environment for a child that imports it)."""
    from edgecompile import proc

    with tempfile.TemporaryDirectory(prefix="ec-baseline-") as tmp:
        tar = Path(tmp) / "tree.tar"
        proc.run(["git", "-C", str(REPO), "archive", "-o", str(tar), rev], what=f"git archive {rev}")
        tree = Path(tmp) / "tree"
        tree.mkdir()
        proc.run(["tar", "-xf", str(tar), "-C", str(tree)], what="tar")
        for sub, d in (("firmware_templates", "firmware_templates"), ("target_files", "targets")):
            if (tree / d).is_dir() and not (tree / "edgecompile" / sub).exists():
                (tree / "edgecompile" / sub).symlink_to(Path("..") / d)
        yield tree, {**os.environ, "PYTHONPATH": str(tree)}
