"""Labeled image data for on-device accuracy tests.

`digits`: the UCI handwritten digits set that ships inside scikit-learn (1,797 8x8 grey images,
10 classes), upsampled bilinearly to the model's resolution and repeated over 3 channels,
normalised to zero mean / unit variance over the training split. The split is fixed (seeded):
80% train, 20% test; `edgecompile test` draws from the test split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import EdgeCompileError

DATASETS = ("digits", "random")
SPLIT_SEED = 1234


@dataclass
class Dataset:
    name: str
    images: np.ndarray          # N x C x H x W float32
    labels: np.ndarray | None   # N int64, None for unlabeled data


def _digits(split: str, shape: tuple[int, ...]) -> Dataset:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise EdgeCompileError("the digits dataset needs scikit-learn (pip install scikit-learn)") from None
    import torch
    import torch.nn.functional as F

    data = load_digits()
    x = data.images.astype(np.float32) / 16.0
    y = data.target.astype(np.int64)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    cut = int(0.8 * len(x))
    idx = order[:cut] if split == "train" else order[cut:]
    _, c, h, w = shape
    t = torch.from_numpy(x[idx])[:, None]
    t = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False).repeat(1, c, 1, 1)
    mean, std = 0.3, 0.4   # of the upsampled training images, rounded (fixed, so inputs are reproducible)
    return Dataset("digits", ((t - mean) / std).numpy().astype(np.float32), y[idx])


def load_dataset(name: str, shape: tuple[int, ...], split: str = "test", count: int | None = None,
                 seed: int = 0) -> Dataset:
    if len(shape) != 4:
        raise EdgeCompileError(f"datasets need an N,C,H,W input, the model takes {list(shape)}")
    if name == "digits":
        ds = _digits(split, shape)
    elif name == "random":
        n = count or 20
        ds = Dataset("random", np.random.default_rng(seed).standard_normal((n, *shape[1:])).astype(np.float32), None)
    else:
        raise EdgeCompileError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    if count is not None:
        if count > len(ds.images):
            raise EdgeCompileError(f"--samples {count}: the {name} {split} split has {len(ds.images)}")
        ds.images = ds.images[:count]
        ds.labels = None if ds.labels is None else ds.labels[:count]
    return ds


def calibration_inputs(shape: tuple[int, ...], spec: str, count: int) -> np.ndarray:
    """int8 calibration inputs for a model input of `shape`: a dataset name or an .npy file of
    inputs (N x the input shape without its batch dimension)."""
    if spec.endswith(".npy"):
        try:
            data = np.load(spec).astype(np.float32)
        except (OSError, ValueError) as err:
            raise EdgeCompileError(f"{spec}: cannot read calibration data: {err}") from None
        if data.shape[1:] != tuple(shape[1:]):
            raise EdgeCompileError(f"{spec}: calibration inputs have shape {data.shape[1:]}, the model takes "
                                   f"{tuple(shape[1:])}")
        return data[:count]
    if len(shape) != 4:
        spec = "random"
    ds = load_dataset(spec, shape, "train", min(count, 1437) if spec == "digits" else count)
    return ds.images
