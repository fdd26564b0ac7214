"""Training augmentation, normalisation and the torch ``Dataset`` over a :class:`~segdemo.data.Source`.

No torchvision: crops, flips and colour jitter are PIL/numpy, and the processor's
normalisation is one numpy multiply-add (:class:`Normalize`), so the training hot path never
calls a transformers image processor. Validation samples do go through the processor, so
training-time evaluation sees exactly what the app feeds the model.

Label convention: train ids ``0..num_labels-1``, :data:`~segdemo.labels.IGNORE_INDEX` (255)
for void and padding (see :mod:`segdemo.labels`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageEnhance

from segdemo.data import DatasetError, Source
from segdemo.labels import IGNORE_INDEX, to_train_ids


@dataclass(frozen=True)
class Normalize:
    """The pixel arithmetic of a transformers image processor, as one numpy step.

    ``pixel = (rgb * scale - mean) / std``, channels flipped to BGR when ``bgr``
    (MobileViT's processors do that). Output ``3xHxW float32``.
    """

    scale: float = 1 / 255
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    bgr: bool = False

    @classmethod
    def from_processor(cls, processor: Any) -> Normalize:
        normalize = getattr(processor, "do_normalize", False)
        return cls(
            scale=float(processor.rescale_factor)
            if getattr(processor, "do_rescale", True)
            else 1.0,
            mean=tuple(processor.image_mean) if normalize else (0.0, 0.0, 0.0),
            std=tuple(processor.image_std) if normalize else (1.0, 1.0, 1.0),
            bgr=bool(getattr(processor, "do_flip_channel_order", False)),
        )

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """``HxWx3 uint8 RGB`` -> ``3xHxW float32``."""
        # fold scale/mean/std into one multiply-add per pixel: the hot path of every batch
        gain = np.asarray(self.scale, np.float32) / np.asarray(self.std, np.float32)
        offset = -np.asarray(self.mean, np.float32) / np.asarray(self.std, np.float32)
        pixels = rgb[..., ::-1] if self.bgr else rgb
        if self.bgr:
            gain, offset = gain[::-1], offset[::-1]
        channels = np.moveaxis(pixels, -1, 0).astype(np.float32)
        return channels * gain[:, None, None] + offset[:, None, None]


def processor_size(processor: Any, height: int, width: int) -> tuple[int, int]:
    """The ``(height, width)`` the processor resizes an ``height x width`` image to.

    Handles ``{"height", "width"}`` (SegFormer, BEiT, DPT without aspect keeping) and
    ``{"shortest_edge"}`` (aspect kept). Raises :class:`DatasetError` for other schemes.
    """
    size = dict(getattr(processor, "size", None) or {})
    if "height" in size and "width" in size:
        return int(size["height"]), int(size["width"])
    if "shortest_edge" in size:
        factor = size["shortest_edge"] / min(height, width)
        if size.get("longest_edge"):  # Mask2Former/OneFormer: {"shortest_edge", "longest_edge"}
            factor = min(factor, size["longest_edge"] / max(height, width))
        return max(1, round(height * factor)), max(1, round(width * factor))
    raise DatasetError(
        f"image processor size {size} is not supported; use one with height/width or shortest_edge"
    )


@dataclass(frozen=True)
class Augment:
    """Training augmentation on PIL/numpy (no torchvision), in the order applied:

    1. resize to ``base_size(h, w)`` times a random scale in ``scale_range`` (aspect kept;
       bilinear for the photo, nearest for labels);
    2. random crop to ``crop_size``; smaller images are padded (photo with the mean,
       i.e. 0 after normalisation; labels with :data:`IGNORE_INDEX`);
    3. colour jitter (brightness, contrast, saturation, hue) in random order, like
       torchvision's ``ColorJitter(0.25, 0.25, 0.25, 0.1)`` in the transformers guide;
    4. horizontal flip with probability ``flip``.
    """

    crop_size: tuple[int, int]
    scale_range: tuple[float, float] = (0.5, 2.0)
    flip: float = 0.5
    jitter: tuple[float, float, float, float] = (0.25, 0.25, 0.25, 0.1)

    def __call__(
        self,
        image: Image.Image,
        labels: np.ndarray,
        base: tuple[int, int],
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Returns ``(hxwx3 uint8 crop, hxw int64 labels)``, ``h, w <= crop_size`` (pad afterwards).

        ``labels`` may be ``HxW`` or ``KxHxW`` (then ``Kxhxw`` comes back).
        """
        crop_h, crop_w = self.crop_size
        scale = rng.uniform(*self.scale_range)
        scaled_h, scaled_w = max(1, round(base[0] * scale)), max(1, round(base[1] * scale))
        out_h, out_w = min(crop_h, scaled_h), min(crop_w, scaled_w)
        top = int(rng.integers(0, scaled_h - out_h + 1))
        left = int(rng.integers(0, scaled_w - out_w + 1))
        # resize only the crop window (PIL's box argument): a 2x upscale never materialises
        fy, fx = image.height / scaled_h, image.width / scaled_w
        box = (left * fx, top * fy, (left + out_w) * fx, (top + out_h) * fy)
        crop = image.resize((out_w, out_h), Image.BILINEAR, box=box)
        # labels may also be a KxHxW stack (segdemo.universal_transforms packs instance masks
        # into int32 planes): every plane gets the same nearest-neighbour geometry
        planes = labels if labels.ndim == 3 else labels[None]
        cropped = np.stack(
            [
                np.asarray(
                    Image.fromarray(plane.astype(np.int32)).resize(
                        (out_w, out_h), Image.NEAREST, box=box
                    )
                )
                for plane in planes
            ]
        ).astype(np.int64)
        cropped = cropped if labels.ndim == 3 else cropped[0]
        pixels = np.asarray(color_jitter(crop, *self.jitter, rng=rng))
        if rng.random() < self.flip:
            pixels, cropped = pixels[:, ::-1], cropped[..., ::-1]
        return pixels, np.ascontiguousarray(cropped)


def color_jitter(
    image: Image.Image,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
    *,
    rng: np.random.Generator,
) -> Image.Image:
    """torchvision's ``ColorJitter`` on an RGB PIL image, with the same PIL operations it uses.

    Factors: brightness/contrast/saturation drawn from ``[1-x, 1+x]``, hue shift from
    ``[-hue, hue]`` turns of the colour wheel; the four ops run in a random order.
    Pillow's C code keeps this at ~2 ms for 480x360 (a float HSV round trip in numpy: ~30 ms).
    """
    for op in rng.permutation(4):
        if op == 0 and brightness > 0:
            image = ImageEnhance.Brightness(image).enhance(
                rng.uniform(1 - brightness, 1 + brightness)
            )
        elif op == 1 and contrast > 0:
            image = ImageEnhance.Contrast(image).enhance(rng.uniform(1 - contrast, 1 + contrast))
        elif op == 2 and saturation > 0:
            image = ImageEnhance.Color(image).enhance(rng.uniform(1 - saturation, 1 + saturation))
        elif op == 3 and hue > 0:
            image = _shift_hue(image, rng.uniform(-hue, hue))
    return image


def _shift_hue(image: Image.Image, shift: float) -> Image.Image:
    """Rotate hue by ``shift`` turns (uint8 hue wraps around, as in torchvision's PIL path)."""
    h, s, v = image.convert("HSV").split()
    hue = np.asarray(h, np.uint8) + np.uint8(round(shift * 255) % 256)  # uint8 addition wraps
    return Image.merge("HSV", (Image.fromarray(hue), s, v)).convert("RGB")


class SegmentationDataset(torch.utils.data.Dataset):
    """Samples for training (``augment`` given) or validation (``augment=None``).

    Training items: ``{"pixel_values": 3xHxW float32, "labels": HxW int64}`` at the crop size,
    normalised with :class:`Normalize` from the processor; labels are train ids with
    :data:`IGNORE_INDEX` (255) for void and padding. Batch them with torch's default collate.

    Validation items: ``pixel_values`` from ``processor(images=...)`` (what the app feeds the
    model), ``labels`` at the annotation's own resolution, ``index`` the sample index.
    Batch them with :func:`collate_eval` (labels stay a list: sizes may differ).
    """

    def __init__(
        self,
        source: Source,
        processor: Any,
        *,
        augment: Augment | None = None,
        reduce_labels: bool = False,
        ignore_index: int | None = IGNORE_INDEX,
        base_size: Callable[[int, int], tuple[int, int]] | None = None,
    ):
        self.source = source
        self.processor = processor
        self.augment = augment
        self.reduce_labels = reduce_labels
        self.ignore_index = ignore_index
        self.normalize = Normalize.from_processor(processor)
        # a plain attribute, not a lambda: spawn-started DataLoader workers pickle the dataset
        self.base_size = base_size

    def __len__(self) -> int:
        return len(self.source)

    def _processor_size(self, height: int, width: int) -> tuple[int, int]:
        return processor_size(self.processor, height, width)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, raw = self.source[index]
        labels = to_train_ids(raw, reduce_labels=self.reduce_labels, ignore_index=self.ignore_index)
        if self.augment is None:
            pixel_values = self.processor(images=image, return_tensors="pt")["pixel_values"][0]
            return {
                "pixel_values": pixel_values,
                "labels": torch.from_numpy(labels),
                "index": torch.tensor(index),
            }
        # numpy RNG seeded from torch's: DataLoader gives every worker its own torch seed,
        # and accelerate's set_seed makes the whole run reproducible
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        base = (self.base_size or self._processor_size)(image.height, image.width)
        pixels, crop = self.augment(image, labels, base, rng)
        # pad after normalising: 0 is the mean colour, and padded labels are ignored.
        # numpy, not torch: torch ops here would wake its intra-op thread pool per sample
        crop_h, crop_w = self.augment.crop_size
        pixel_values = np.zeros((3, crop_h, crop_w), np.float32)
        pixel_values[:, : crop.shape[0], : crop.shape[1]] = self.normalize(pixels)
        padded = np.full((crop_h, crop_w), IGNORE_INDEX, np.int64)
        padded[: crop.shape[0], : crop.shape[1]] = crop
        return {"pixel_values": torch.from_numpy(pixel_values), "labels": torch.from_numpy(padded)}


def collate_eval(items: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """Stack validation items: ``pixel_values`` ``Bx3xHxW``, ``labels`` a list of ``HxW``, ``index`` ``(B,)``."""
    return {
        "pixel_values": torch.stack([item["pixel_values"] for item in items]),
        "labels": [item["labels"] for item in items],
        "index": torch.stack([item["index"] for item in items]),
    }
