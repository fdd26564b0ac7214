"""Batched inference: images whose model inputs have equal shapes go through the model together.

    >>> for done in segment_stream(loaded, paths, load_image, "semantic", batch_size=8):
    ...     print(done.item, done.error or len(done.result.segments))

With ``batch_size=1`` each image simply goes through :func:`segdemo.segment.segment`.
Larger batches prepare every image on its own with :func:`segdemo.segment.model_inputs`
(exactly as for one image), concatenate only inputs of identical shapes (nothing is
padded), run the model once and post-process each image's slice of the outputs with
:func:`segdemo.segment.result_from_outputs`. Processors with a fixed input size
(SegFormer, UperNet, DPT...) batch every image; those that keep the aspect ratio
(Mask2Former, MaskFormer, OneFormer) batch images of one processed size.

The arithmetic per image is the same, the kernels are not always: oneDNN (CPU
convolutions) and cuDNN choose their algorithm by batch shape, which moves logits by
about 1e-6 (measured on the test models). The tests assert identical label maps and
segments for every family and task at batch sizes 1, 2 and 4, with scores (rounded to
6 decimals by the processors) equal within 1e-5. On a real model a pixel whose two
best classes are closer than that could still come out differently; batch size 1 is
:func:`segdemo.segment.segment` itself.

Images wait in per-shape groups until a group is full; at most ``4 * batch_size``
images wait at once (then the largest group runs, part-full), so memory stays bounded
whatever the mix of sizes. Results therefore come in completion order, which is input
order when all images share a shape.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
import torch
from PIL import Image

from segdemo import segment as segment_module
from segdemo.errors import SegdemoError
from segdemo.models import LoadedModel
from segdemo.result import SegmentationResult, Task
from segdemo.segment import model_inputs, result_from_outputs, run_model
from segdemo.thresholds import DEFAULT_THRESHOLDS

T = TypeVar("T")

WAITING_FACTOR = 4
"""At most ``WAITING_FACTOR * batch_size`` images wait for a batch."""


@dataclass(frozen=True)
class Done(Generic[T]):
    """One finished item: ``result`` or ``error`` is set.

    Attributes:
        item: what the caller passed in.
        image: the RGB image read (``None`` when reading failed).
        result: the segmentation at the image's resolution.
        error: a one-line user error (:class:`SegdemoError`, ``OSError``, or ``ValueError``
            from the processor) when this item failed; the others go on.
    """

    item: T
    image: Image.Image | None = None
    result: SegmentationResult | None = None
    error: Exception | None = None


@dataclass
class _Waiting:
    item: Any
    image: Image.Image
    inputs: dict[str, Any]


def segment_stream(
    loaded: LoadedModel,
    items: Iterable[T],
    load: Callable[[T], Image.Image],
    task: Task | str,
    *,
    batch_size: int = 1,
    threshold: float = DEFAULT_THRESHOLDS.threshold,
    mask_threshold: float = DEFAULT_THRESHOLDS.mask_threshold,
    overlap_mask_area_threshold: float = DEFAULT_THRESHOLDS.overlap_mask_area_threshold,
    label_ids_to_fuse: set[int] | None = None,
    max_size: int | None = None,
    tta: str | None = None,
) -> Iterator[Done[T]]:
    """Segment ``items`` in batches of up to ``batch_size`` images of one input shape.

    Args:
        loaded: a model from :func:`segdemo.models.load_model`.
        items: anything ``load`` turns into an RGB ``PIL.Image`` (paths, for example).
        load: reads one item; may raise ``SegdemoError`` or ``OSError`` (that item fails).
        task, threshold, mask_threshold, overlap_mask_area_threshold, label_ids_to_fuse,
            max_size, tta: as in :func:`segdemo.segment.segment` (``tta`` with
            ``batch_size`` 1 only).
        batch_size: most images per forward pass (>= 1).

    Yields:
        One :class:`Done` per item: failures when they happen (reading, preprocessing),
        results when their batch has run.

    Raises:
        UnsupportedTaskError: ``task`` is not one of ``loaded.tasks`` (before any item).
        ValueError: ``batch_size`` < 1, ``max_size`` < 32, or ``tta`` with ``batch_size`` > 1.
    """
    task = loaded.check_task(task)
    if batch_size < 1:
        raise ValueError(f"batch_size {batch_size} must be at least 1")
    if tta is not None and batch_size > 1:
        raise ValueError("test-time augmentation runs one image at a time; use batch size 1")
    if max_size is not None and max_size < 32:
        raise ValueError(
            f"max_size {max_size} is too small; use at least 32 pixels (or None for no cap)"
        )
    post = {
        "threshold": threshold,
        "mask_threshold": mask_threshold,
        "overlap_mask_area_threshold": overlap_mask_area_threshold,
        "label_ids_to_fuse": label_ids_to_fuse,
    }
    if batch_size == 1:  # the one-image path itself: nothing to group
        yield from _one_by_one(loaded, items, load, task, post | {"max_size": max_size, "tta": tta})
        return
    groups: dict[tuple, list[_Waiting]] = {}
    for item in items:
        try:
            image = load(item)
            inputs = model_inputs(loaded, image, task, max_size)
        except (SegdemoError, OSError, ValueError) as err:
            yield Done(item, error=err)
            continue
        group = groups.setdefault(_shape_key(inputs), [])
        group.append(_Waiting(item, image, inputs))
        if len(group) >= batch_size:
            yield from _run(loaded, task, groups.pop(_shape_key(inputs)), post)
        elif sum(len(g) for g in groups.values()) >= WAITING_FACTOR * batch_size:
            largest = max(groups, key=lambda key: len(groups[key]))
            yield from _run(loaded, task, groups.pop(largest), post)
    for key in list(groups):
        yield from _run(loaded, task, groups.pop(key), post)


def segment_batch(
    loaded: LoadedModel,
    images: list[Image.Image | np.ndarray | str | os.PathLike | bytes],
    task: Task | str,
    *,
    batch_size: int | None = None,
    **options: Any,
) -> list[SegmentationResult]:
    """:func:`segdemo.segment.segment` of every image, in input order, batched.

    Args:
        images: as :func:`segdemo.segment.segment` takes them.
        batch_size: default ``len(images)``.
        options: the keyword arguments of :func:`segment_stream`.

    Raises:
        the first item's error, as :func:`segdemo.segment.segment` would.
    """
    from segdemo.images import load_image

    def load(index: int) -> Image.Image:
        image = images[index]
        return (
            image if isinstance(image, Image.Image) and image.mode == "RGB" else load_image(image)
        )

    results: dict[int, SegmentationResult] = {}
    size = batch_size or max(1, len(images))
    for done in segment_stream(loaded, range(len(images)), load, task, batch_size=size, **options):
        if done.error is not None:
            raise done.error
        results[done.item] = done.result
    return [results[i] for i in range(len(images))]


# --------------------------------------------------------------------------- internals


def _one_by_one(
    loaded: LoadedModel, items: Iterable[T], load: Callable[[T], Image.Image], task: Task, options
) -> Iterator[Done[T]]:
    for item in items:
        try:
            image = load(item)
            result = segment_module.segment(loaded, image, task, **options)
        except (SegdemoError, OSError, ValueError) as err:
            yield Done(item, error=err)
            continue
        yield Done(item, image, result)


def _shape_key(inputs: dict[str, Any]) -> tuple:
    """Inputs with equal keys concatenate without padding when every tensor's shape agrees."""
    return tuple(
        (key, tuple(value.shape), str(value.dtype))
        if isinstance(value, torch.Tensor)
        else (key, repr(value))
        for key, value in sorted(inputs.items())
    )


def _run(loaded: LoadedModel, task: Task, group: list[_Waiting], post: dict) -> Iterator[Done]:
    """One forward pass for ``group``; each image's slice post-processed on its own."""
    try:
        batch = _concatenate([w.inputs for w in group])
        with torch.inference_mode():
            outputs = run_model(loaded, batch)
            results = [
                result_from_outputs(
                    loaded,
                    _item(outputs, index, len(group)),
                    task,
                    (waiting.image.height, waiting.image.width),
                    **post,
                )
                for index, waiting in enumerate(group)
            ]
    except (SegdemoError, ValueError) as err:
        for waiting in group:
            yield Done(waiting.item, waiting.image, error=err)
        return
    for waiting, result in zip(group, results, strict=True):
        yield Done(waiting.item, waiting.image, result)


def _concatenate(inputs: list[dict[str, Any]]) -> dict[str, Any]:
    if len(inputs) == 1:
        return inputs[0]
    return {
        key: torch.cat([i[key] for i in inputs]) if isinstance(value, torch.Tensor) else value
        for key, value in inputs[0].items()
    }


def _item(outputs: Any, index: int, size: int) -> Any:
    """Image ``index`` of a batch's model outputs, as a batch of one (tensor fields only)."""
    if size == 1:
        return outputs
    fields = {
        key: value[index : index + 1]
        for key, value in outputs.items()
        if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == size
    }
    return type(outputs)(**fields)


__all__ = ["Done", "segment_batch", "segment_stream"]
