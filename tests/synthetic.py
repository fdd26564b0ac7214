"""Synthetic segmentation datasets written by the tests (no files from outside the repo).

Each image is a noisy grey background (class 0) with red rectangles (class 1) and blue
ellipses (class 2); the one-pixel ring around every shape is void. The class is readable
from a pixel's colour, so a tiny model learns it in a few hundred steps.

    >>> root = write_folder(tmp_path / "shapes", n_train=8, n_val=4)
    >>> # root/id2label.json, root/{train,val}/{images/NAME.png, annotations/NAME.png}
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

ID2LABEL = {0: "background", 1: "box", 2: "disc"}
COLOURS = {1: (220, 40, 40), 2: (40, 60, 220)}


def make_pair(
    rng: np.random.Generator, height: int = 48, width: int = 64, void: int = 255
) -> tuple[np.ndarray, np.ndarray]:
    """One ``(HxWx3 uint8 RGB, HxW uint8 raw labels)`` pair; ``void`` marks the rings."""
    image = rng.normal(128, 20, (height, width, 3)).clip(0, 255).astype(np.uint8)
    labels = np.zeros((height, width), np.uint8)
    yy, xx = np.mgrid[:height, :width]
    for class_id in (1, 2):
        for _ in range(int(rng.integers(1, 3))):
            h, w = rng.integers(height // 5, height // 2), rng.integers(width // 5, width // 2)
            top, left = rng.integers(0, height - h), rng.integers(0, width - w)
            if class_id == 1:
                inside = (yy >= top) & (yy < top + h) & (xx >= left) & (xx < left + w)
            else:
                cy, cx = top + h / 2, left + w / 2
                inside = ((yy - cy) / (h / 2)) ** 2 + ((xx - cx) / (w / 2)) ** 2 <= 1
            grown = _dilate(inside)
            labels[grown & ~inside] = void
            labels[inside] = class_id
            image[inside] = np.asarray(COLOURS[class_id]) + rng.normal(
                0, 10, (inside.sum(), 3)
            ).clip(-30, 30)
    return image, labels


def _dilate(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def write_folder(
    root: str | os.PathLike,
    n_train: int = 8,
    n_val: int = 4,
    *,
    seed: int = 0,
    void: int = 255,
    size: tuple[int, int] = (48, 64),
    image_format: str = "png",
) -> Path:
    """Write the folder layout of :mod:`segdemo.data` (``n_val=0``: no val split)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, count in (("train", n_train), ("val", n_val)):
        if count == 0:
            continue
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "annotations").mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, labels = make_pair(rng, *size, void=void)
            Image.fromarray(image).save(root / split / "images" / f"{split}_{i:03d}.{image_format}")
            Image.fromarray(labels).save(root / split / "annotations" / f"{split}_{i:03d}.png")
    (root / "id2label.json").write_text(json.dumps({str(k): v for k, v in ID2LABEL.items()}))
    return root
