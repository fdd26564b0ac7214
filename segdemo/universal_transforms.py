"""Torch datasets and collate functions for instance/panoptic (universal) segmentation models.

Training items are augmented by :class:`segdemo.transforms.Augment` (scale, crop, colour
jitter, flip; no torchvision, no image processor in the hot path): the instance masks are
packed into ``int32`` planes (one segment-index map when they do not overlap, else 31 masks
per plane as bits), which go through the same nearest-neighbour geometry as the photo and
are unpacked afterwards, so masks stay aligned with the pixels. Items are built in
DataLoader workers; :func:`collate_train` only stacks.

Validation items go through the model's image processor itself (``processor(images=[img])``,
what the app feeds the model) and keep the :class:`~segdemo.coco.Target` at the image's own
resolution for PQ and mask AP.

Crowd segments are not training targets (their pixels are in no mask, as in detectron2's
Mask2Former mappers); the instance task trains on things only; void and padding pixels are
in no mask.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from PIL import Image

from segdemo.coco import TASKS, Target, UniversalSource
from segdemo.transforms import Augment, Normalize, processor_size

BITS_PER_PLANE = 31
"""Masks per ``int32`` plane when masks overlap (bit 31 is the sign: left unused)."""


def pack_masks(masks: np.ndarray) -> tuple[np.ndarray, bool]:
    """``(N, H, W) bool`` masks -> ``((P, H, W) int32 planes, overlapping)``.

    Non-overlapping masks become one plane of segment indices ``1..N`` (0 = no mask);
    overlapping ones become ``ceil(N / 31)`` planes holding mask ``k`` as bit ``k % 31`` of
    plane ``k // 31``. Any nearest-neighbour resampling of the planes is exact for the masks.
    """
    n, h, w = masks.shape
    if n == 0 or masks.sum(0, dtype=np.int32).max() <= 1:
        plane = np.zeros((h, w), np.int32)
        for k, mask in enumerate(masks, start=1):
            plane[mask] = k
        return plane[None], False
    planes = np.zeros((-(-n // BITS_PER_PLANE), h, w), np.int32)
    for k, mask in enumerate(masks):
        planes[k // BITS_PER_PLANE][mask] |= np.int32(1 << (k % BITS_PER_PLANE))
    return planes, True


def unpack_masks(planes: np.ndarray, n: int, overlapping: bool) -> np.ndarray:
    """Inverse of :func:`pack_masks`: ``(P, h, w)`` integer planes -> ``(n, h, w) bool``."""
    if not overlapping:
        return planes[0][None] == np.arange(1, n + 1)[:, None, None]
    k = np.arange(n)
    return ((planes[k // BITS_PER_PLANE] >> (k % BITS_PER_PLANE)[:, None, None]) & 1).astype(bool)


def training_segments(target: Target, task: str, thing_ids: Iterable[int]) -> Target:
    """The segments a model trains on: no crowd; for ``task="instance"`` things only."""
    keep = ~target.iscrowd
    if task == "instance":
        keep &= np.isin(target.class_ids, np.fromiter(thing_ids, np.int64))
    return Target(
        target.masks[keep], target.class_ids[keep], target.iscrowd[keep], target.segment_ids[keep]
    )


class UniversalTrainDataset(torch.utils.data.Dataset):
    """Augmented training samples for Mask2Former/MaskFormer/OneFormer-style models.

    Items: ``pixel_values`` ``3xHxW float32`` at ``augment.crop_size`` (normalised with the
    processor's mean/std; padding is 0 = the mean colour), ``pixel_mask`` ``HxW int64``
    (1 = real pixel, 0 = padding), ``mask_labels`` ``(N, H, W) float32`` 0/1 and
    ``class_labels`` ``(N,) int64`` model class ids. Crowd segments are removed (and stuff for
    ``task="instance"``); segments emptied by the crop are dropped, so ``N`` may be 0.

    Args:
        source: images and targets (:mod:`segdemo.coco`).
        processor: the model's image processor (its mean/std/rescale, and its ``size`` as the
            base size that the random scale multiplies; see
            :func:`segdemo.transforms.processor_size`).
        augment: scale/crop/jitter/flip; ``None`` = resize to the processor's size only
            (no randomness), padded to the size itself.
        task: ``"instance"`` or ``"panoptic"``.
        thing_ids: class ids that are things.
        base_size: ``(h, w) -> (base_h, base_w)`` instead of the processor's size.
    """

    def __init__(
        self,
        source: UniversalSource,
        processor: Any,
        augment: Augment | None,
        task: str,
        thing_ids: Iterable[int],
        *,
        base_size: Callable[[int, int], tuple[int, int]] | None = None,
    ):
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        self.source = source
        self.processor = getattr(processor, "image_processor", processor)
        self.augment = augment
        self.task = task
        self.thing_ids = frozenset(int(t) for t in thing_ids)
        self.normalize = Normalize.from_processor(self.processor)
        # a plain attribute, not a lambda: spawn-started DataLoader workers pickle the dataset
        self.base_size = base_size

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, target = self.source[index]
        target = training_segments(target, self.task, self.thing_ids)
        planes, overlapping = pack_masks(target.masks)
        base = (self.base_size or self._processor_size)(image.height, image.width)
        if self.augment is None:
            pixels, planes = _resize(image, planes, base)
            crop_h, crop_w = base
        else:
            # numpy RNG seeded from torch's: DataLoader gives every worker its own torch seed
            rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
            pixels, planes = self.augment(image, planes, base, rng)
            crop_h, crop_w = self.augment.crop_size
        masks = unpack_masks(planes, len(target.masks), overlapping)
        present = masks.any((1, 2))
        masks, class_labels = masks[present], target.class_ids[present]
        h, w = pixels.shape[:2]
        # numpy, not torch: torch ops here would wake its intra-op thread pool per sample
        pixel_values = np.zeros((3, crop_h, crop_w), np.float32)
        pixel_values[:, :h, :w] = self.normalize(pixels)
        pixel_mask = np.zeros((crop_h, crop_w), np.int64)
        pixel_mask[:h, :w] = 1
        mask_labels = np.zeros((len(masks), crop_h, crop_w), np.float32)
        mask_labels[:, :h, :w] = masks
        return {
            "pixel_values": torch.from_numpy(pixel_values),
            "pixel_mask": torch.from_numpy(pixel_mask),
            "mask_labels": torch.from_numpy(mask_labels),
            "class_labels": torch.from_numpy(np.ascontiguousarray(class_labels, np.int64)),
        }

    def _processor_size(self, height: int, width: int) -> tuple[int, int]:
        return processor_size(self.processor, height, width)


def _resize(image: Image.Image, planes: np.ndarray, size: tuple[int, int]):
    """Deterministic resize of photo (bilinear) and mask planes (nearest) to ``size`` = (h, w)."""
    h, w = size
    pixels = np.asarray(image.resize((w, h), Image.BILINEAR))
    resized = np.stack(
        [np.asarray(Image.fromarray(p).resize((w, h), Image.NEAREST)) for p in planes]
    )
    return pixels, resized.astype(np.int64)


class UniversalEvalDataset(torch.utils.data.Dataset):
    """Validation samples: the processor's own preprocessing, the target at full resolution.

    Items: ``pixel_values`` ``3xhxw float32`` exactly as ``processor(images=[image])`` makes
    it (resize, rescale, normalise, pad to ``size_divisor``), ``pixel_mask`` ``hxw int64``
    (1 = image, 0 = padding), ``target`` the :class:`~segdemo.coco.Target` at the image's
    original resolution (crowd and stuff kept: PQ and AP need them), ``name`` the file stem.
    OneFormer's processor also gets ``task_inputs=[task]`` (its text is tokenised by the
    caller, as :func:`segdemo.segment._forward` does).
    """

    def __init__(self, source: UniversalSource, processor: Any, task: str = "panoptic"):
        self.source = source
        self.processor = getattr(processor, "image_processor", processor)
        self.task = task

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, target = self.source[index]
        kwargs = {}
        if type(self.processor).__name__.startswith("OneFormer"):
            kwargs["task_inputs"] = [self.task]
        inputs = self.processor(images=[image], return_tensors="pt", **kwargs)
        pixel_values = inputs["pixel_values"][0]
        pixel_mask = inputs.get("pixel_mask")
        return {
            "pixel_values": pixel_values,
            "pixel_mask": pixel_mask[0].long()
            if pixel_mask is not None
            else torch.ones(pixel_values.shape[1:], dtype=torch.long),
            "target": target,
            "name": self.source.key(index),
        }


def collate_train(batch: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """``pixel_values`` ``Bx3xHxW``, ``pixel_mask`` ``BxHxW``; ``mask_labels`` a list of
    ``(N_i, H, W)`` and ``class_labels`` a list of ``(N_i,)`` (the counts differ per image)."""
    return {
        "pixel_values": torch.stack([item["pixel_values"] for item in batch]),
        "pixel_mask": torch.stack([item["pixel_mask"] for item in batch]),
        "mask_labels": [item["mask_labels"] for item in batch],
        "class_labels": [item["class_labels"] for item in batch],
    }


def collate_eval(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """``pixel_values`` ``Bx3xhxw`` and ``pixel_mask`` ``Bxhxw`` (zero-padded to the largest
    item when sizes differ, e.g. ``shortest_edge`` processors), ``targets`` list of
    :class:`~segdemo.coco.Target`, ``names`` list of str."""
    h = max(item["pixel_values"].shape[1] for item in batch)
    w = max(item["pixel_values"].shape[2] for item in batch)
    pixel_values = torch.zeros((len(batch), 3, h, w), dtype=batch[0]["pixel_values"].dtype)
    pixel_mask = torch.zeros((len(batch), h, w), dtype=torch.long)
    for i, item in enumerate(batch):
        _, ih, iw = item["pixel_values"].shape
        pixel_values[i, :, :ih, :iw] = item["pixel_values"]
        pixel_mask[i, :ih, :iw] = item["pixel_mask"]
    return {
        "pixel_values": pixel_values,
        "pixel_mask": pixel_mask,
        "targets": [item["target"] for item in batch],
        "names": [item["name"] for item in batch],
    }
