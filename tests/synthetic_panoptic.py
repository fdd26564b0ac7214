"""A synthetic COCO panoptic folder: two stuff classes plus discs and boxes as instances.

Each image is sky (top) over ground (bottom), with 1-3 non-overlapping red discs and
yellow boxes, pixel noise added. Category ids are non-contiguous on purpose (the reader
maps them to model ids 0..3 by sorted COCO id).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

CATEGORIES = [
    {"id": 3, "name": "sky", "isthing": 0},
    {"id": 5, "name": "ground", "isthing": 0},
    {"id": 11, "name": "disc", "isthing": 1},
    {"id": 20, "name": "box", "isthing": 1},
]
ID2LABEL = {0: "sky", 1: "ground", 2: "disc", 3: "box"}
COLOURS = {3: (90, 160, 230), 5: (70, 140, 60), 11: (220, 40, 40), 20: (240, 210, 40)}


def make_sample(rng: np.random.Generator, size: tuple[int, int] = (128, 128)):
    """``(HxWx3 uint8 image, HxW int32 segment ids, segments_info)``."""
    h, w = size
    ids = np.zeros((h, w), np.int32)
    horizon = int(rng.integers(h // 3, 2 * h // 3))
    ids[:horizon] = 1
    ids[horizon:] = 2
    segments = [
        {"id": 1, "category_id": 3, "iscrowd": 0},
        {"id": 2, "category_id": 5, "iscrowd": 0},
    ]
    taken = np.zeros((h, w), bool)
    yy, xx = np.mgrid[:h, :w]
    for _ in range(int(rng.integers(1, 4))):
        category = int(rng.choice([11, 20]))
        for _attempt in range(20):
            r = int(rng.integers(h // 10, h // 6))
            cy, cx = int(rng.integers(r, h - r)), int(rng.integers(r, w - r))
            if category == 11:
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            else:
                mask = (abs(yy - cy) <= r) & (abs(xx - cx) <= int(r * 0.8))
            grown = np.zeros_like(mask)
            grown[max(cy - r - 3, 0) : cy + r + 4, max(cx - r - 3, 0) : cx + r + 4] = True
            if not (grown & taken).any():
                break
        else:
            continue
        taken |= mask
        segment_id = len(segments) + 1
        ids[mask] = segment_id
        segments.append({"id": segment_id, "category_id": category, "iscrowd": 0})
    image = np.zeros((h, w, 3), np.float32)
    for segment in segments:
        image[ids == segment["id"]] = COLOURS[segment["category_id"]]
    image += rng.normal(0, 12, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), ids, segments


def write_panoptic_folder(
    root: Path, n_train: int = 24, n_val: int = 8, size: tuple[int, int] = (128, 128), seed: int = 0
) -> Path:
    """``root/{train,val}/{images/, panoptic/, panoptic.json}``; returns ``root``."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", n_train), ("val", n_val)):
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "panoptic").mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for index in range(count):
            name = f"{split}_{index:03d}"
            image, ids, segments = make_sample(rng, size)
            Image.fromarray(image).save(root / split / "images" / f"{name}.png")
            rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
            Image.fromarray(rgb).save(root / split / "panoptic" / f"{name}.png")
            images.append(
                {"id": index, "file_name": f"{name}.png", "height": size[0], "width": size[1]}
            )
            annotations.append(
                {"image_id": index, "file_name": f"{name}.png", "segments_info": segments}
            )
        (root / split / "panoptic.json").write_text(
            json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES})
        )
    return root
