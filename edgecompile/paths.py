"""Where edgecompile's files are: the packaged firmware templates (`firmware_templates/` of the
repository, installed as `edgecompile.firmware_templates`) and the user's cache directory."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path


def template_dir(name: str = "") -> Path:
    return Path(str(resources.files("edgecompile.firmware_templates"))) / name


def cache_dir(*parts: str) -> Path:
    """edgecompile's directory under the user's cache ($XDG_CACHE_HOME or ~/.cache)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).joinpath("edgecompile", *parts)
