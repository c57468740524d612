"""Weights files: a state_dict with the architecture options it was trained with.

`edgecompile train` writes {"format", "model", "options", "state_dict"}; `build --weights` reads
the options back (an option left out on the command line takes the file's value, a conflicting one
is refused). Plain state_dicts (torch.save(model.state_dict())) are read too, without options."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMAT = "edgecompile-weights/1"
ARCHITECTURE = ("width_mult", "resolution", "num_classes", "groups", "input_shape")


class WeightsError(ValueError):
    """A weights file that cannot be read or does not fit the network."""


def save_weights(path: Path, module: nn.Module, model: str, options: dict[str, Any]) -> None:
    """Write atomically: a half-written file never replaces a good one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    arch = {k: v for k, v in options.items() if k in ARCHITECTURE and v is not None}
    torch.save({"format": FORMAT, "model": model, "options": arch, "state_dict": module.state_dict()}, tmp)
    tmp.replace(path)


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(state_dict, {"model", "options"} or None for a plain state_dict)."""
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"{path}: no such file")
    try:
        data = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for bad files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "Unsupported global" in str(err):
            raise WeightsError(f"{path}: holds pickled objects, not weights (save model.state_dict(), "
                               "or use `edgecompile train`)") from None
        raise WeightsError(f"{path}: not a PyTorch weights file ({first[:160]})") from None
    if isinstance(data, dict) and data.get("format") == FORMAT:
        return data["state_dict"], {"model": data.get("model"), "options": dict(data.get("options", {}))}
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise WeightsError(f"{path}: not a state_dict (a dict of tensors), but {type(data).__name__}")
    return data, None


def load_into(module: nn.Module, state: dict[str, torch.Tensor], path: str | Path, model: str) -> None:
    """Load `state` into `module`, or say in one line what does not fit (counts and a few keys)."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or mismatched:
        parts = []
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", mismatched)):
            if keys:
                example = keys[0] if what != "of another shape" else \
                    f"{keys[0]} {tuple(state[keys[0]].shape)} vs {tuple(own[keys[0]].shape)}"
                parts.append(f"{len(keys)} {what} (e.g. {example})")
        raise WeightsError(f"{path}: does not fit {model}: " + ", ".join(parts) + f"; the network has {len(own)} "
                           "tensors: are the architecture options the ones it was trained with?")
    module.load_state_dict(state)


def resolve_options(path: str | Path | None, model: str, given: dict[str, Any]) -> dict[str, Any]:
    """The architecture options: those given, the rest from the weights file's; a given option
    that conflicts with the file's is refused."""
    if path is None:
        return dict(given)
    _, meta = read_weights(path)
    if meta is None:
        return dict(given)
    if meta.get("model") and meta["model"] != model:
        raise WeightsError(f"{path}: weights of {meta['model']}, not {model}")
    out = dict(given)
    for key, value in meta["options"].items():
        mine = given.get(key)
        if isinstance(value, list):
            value = tuple(value)
        if mine is None:
            out[key] = value
        elif mine != value and not (isinstance(mine, float) and abs(mine - float(value)) < 1e-9):
            flag = "--" + key.replace("_", "-")
            raise WeightsError(f"{flag} {mine} conflicts with {path}, trained with {flag} {value}")
    return out
