"""`edgecompile train`: a seeded recipe that trains a zoo model on a packaged dataset, so that
accuracy measured on a device means something (random weights make agreement checks weak and
int8 checks meaningless)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .datasets import load_dataset
from .ir.frontend import ModelSource


def train(source: ModelSource, dataset: str, out: Path, epochs: int = 30, batch: int = 64, lr: float = 5e-3,
          seed: int = 0, progress: Callable[[str], None] = print) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    if source.torch_module is None:
        raise ValueError("training needs a PyTorch model (zoo name or nn.Module factory)")
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    shape = source.inputs[0].shape
    tr = load_dataset(dataset, shape, "train")
    te = load_dataset(dataset, shape, "test")
    xs, ys = torch.from_numpy(tr.images), torch.from_numpy(tr.labels)
    model = source.torch_module
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(xs) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.monotonic()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xs), generator=gen)
        total = 0.0
        for i in range(0, len(xs), batch):
            idx = perm[i:i + batch]
            loss = F.cross_entropy(model(_shift(xs[idx], gen)), ys[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        acc = evaluate(model, te.images, te.labels)
        progress(f"epoch {epoch + 1}/{epochs}: loss {total / len(xs):.4f}, test accuracy {acc:.3f} "
                 f"({time.monotonic() - t0:.0f} s)")
    model.eval()
    from edgecompile.models.weights import save_weights

    save_weights(out, model, source.name, source.options)     # with the architecture options
    return {"weights": str(out), "test_accuracy": evaluate(model, te.images, te.labels), "epochs": epochs,
            "train_samples": len(xs), "test_samples": len(te.images)}


def _shift(x: Any, gen: Any, pad: int = 3) -> Any:
    """Augmentation: translate the batch by up to `pad` pixels (zero-value border)."""
    import torch
    import torch.nn.functional as F

    h, w = x.shape[-2:]
    padded = F.pad(x, (pad, pad, pad, pad), value=float(x.min()))
    dy, dx = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,), generator=gen))
    return padded[..., dy:dy + h, dx:dx + w]


def evaluate(model: Any, images: np.ndarray, labels: np.ndarray) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(images)).argmax(1).numpy()
    return float((pred == labels).mean())
