"""Semantic, instance and panoptic inference -> one :class:`SegmentationResult`.

    >>> result = segment(load_model("local/segdemo-camvid"), load_image("street.jpg"), "semantic")
    >>> result.label_map.shape, result.segments[0].label
    ((360, 480), 'sky')

Results equal ``transformers.pipeline("image-segmentation")`` on the same model, image
and thresholds (the defaults below are the pipeline's): the same preprocessing, forward
pass and post-processing functions of the model's image processor. Semantic
segmentation differs only in *how* the argmax of the bilinearly upsampled logits is
computed (:mod:`segdemo.upsample`): only classes that can win a pixel are interpolated
there, so the ``C x H x W`` logits at full resolution (7.2 GB for 150 classes at
12 MP) never exist. Instance and panoptic results come from :mod:`segdemo.universal_post`,
the processors' post-processing reproduced in row bands: no ``queries x H x W`` masks
(4.8 GB for 100 queries at 12 MP) either.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from segdemo import universal_post
from segdemo.images import load_image
from segdemo.models import LoadedModel
from segdemo.result import Segment, SegmentationResult, Task, region_stats, segments_from_label_map
from segdemo.thresholds import DEFAULT_THRESHOLDS
from segdemo.tta import TTA_MODES, TTA_SCALES
from segdemo.upsample import upsample_argmax


def segment(
    loaded: LoadedModel,
    image: Image.Image | np.ndarray | str | os.PathLike | bytes,
    task: Task | str,
    *,
    threshold: float = DEFAULT_THRESHOLDS.threshold,
    mask_threshold: float = DEFAULT_THRESHOLDS.mask_threshold,
    overlap_mask_area_threshold: float = DEFAULT_THRESHOLDS.overlap_mask_area_threshold,
    label_ids_to_fuse: set[int] | None = None,
    max_size: int | None = None,
    tta: str | None = None,
) -> SegmentationResult:
    """Segment one image.

    Args:
        loaded: a model from :func:`segdemo.models.load_model`.
        image: RGB ``PIL.Image`` (anything else goes through :func:`segdemo.images.load_image`).
        task: ``"semantic"``, ``"instance"`` or ``"panoptic"``; must be in ``loaded.tasks``.
        threshold: instance/panoptic: minimum class probability of a query (pipeline: 0.9).
        mask_threshold: instance/panoptic: probability at which a mask pixel is on.
        overlap_mask_area_threshold: panoptic (and OneFormer instance): drop a segment
            when less than this fraction of its mask survives the overlap resolution.
        label_ids_to_fuse: panoptic: class ids (stuff) whose segments merge into one
            per class. ``None``: the stuff of a model whose ``segdemo.json`` declares
            ``thing_ids`` (``train/run.py``'s), else nothing, as in the pipeline. Instance
            results of such a model hold its things only.
        max_size: cap on the longest side of the *model input* (the processor's resize
            target is shrunk to fit); the result is still at the image's resolution.
        tta: semantic only. ``None`` (default: one pass, the pipeline's result bit for bit);
            ``"flip"``: the class scores of the image and of its mirror image, mirrored
            back, are averaged before the argmax (two forward passes); ``"multiscale"``: the
            softmax probabilities of both at every input scale of :data:`TTA_SCALES`,
            resized bilinearly to the one-pass score size, are averaged (six passes;
            :mod:`segdemo.tta`).

    Returns:
        :class:`SegmentationResult` at the image's ``(height, width)``: semantic label
        maps hold class ids; instance/panoptic label maps hold segment ids ``1..n`` in the
        order the post-processor emitted them (0 = no segment).

    Raises:
        UnsupportedTaskError: ``task`` is not one of ``loaded.tasks``.
        ImageError: ``image`` is not a usable image.
        ValueError: ``max_size`` below 32, or an unknown ``tta`` / ``tta`` with a task
            other than semantic.
    """
    task = loaded.check_task(task)
    if tta not in TTA_MODES:
        raise ValueError(f"tta must be one of {', '.join(map(str, TTA_MODES))}, got {tta!r}")
    if tta is not None and task is not Task.SEMANTIC:
        raise ValueError(f"{tta} TTA is for semantic segmentation, not {task.value}; drop it")
    if not (isinstance(image, Image.Image) and image.mode == "RGB"):
        image = load_image(image)
    if max_size is not None and max_size < 32:
        raise ValueError(
            f"max_size {max_size} is too small; use at least 32 pixels (or None for no cap)"
        )
    target_size = (image.height, image.width)
    with torch.inference_mode():
        if tta is not None:
            return _semantic_result(loaded, _tta_scores(loaded, image, tta, max_size), target_size)
        outputs = _forward(loaded, image, task, max_size)
        return result_from_outputs(
            loaded,
            outputs,
            task,
            target_size,
            threshold=threshold,
            mask_threshold=mask_threshold,
            overlap_mask_area_threshold=overlap_mask_area_threshold,
            label_ids_to_fuse=label_ids_to_fuse,
        )


def result_from_outputs(
    loaded: LoadedModel,
    outputs: Any,
    task: Task,
    target_size: tuple[int, int],
    *,
    threshold: float = DEFAULT_THRESHOLDS.threshold,
    mask_threshold: float = DEFAULT_THRESHOLDS.mask_threshold,
    overlap_mask_area_threshold: float = DEFAULT_THRESHOLDS.overlap_mask_area_threshold,
    label_ids_to_fuse: set[int] | None = None,
) -> SegmentationResult:
    """The :func:`segment` result of one image's model outputs (batch of 1).

    Args:
        outputs: ``loaded.model``'s outputs for the inputs of :func:`model_inputs`.
        target_size: ``(height, width)`` of the image; the other arguments as in
            :func:`segment`.
    """
    if task is Task.SEMANTIC:
        return _semantic_result(loaded, semantic_scores(loaded, outputs), target_size)
    declared = loaded.spec.thing_ids  # from the checkpoint's segdemo.json, else None
    if task is Task.PANOPTIC and label_ids_to_fuse is None and declared is not None:
        label_ids_to_fuse = set(loaded.id2label) - set(declared)  # one segment per stuff class
    label_map, infos = universal_post.post_process(
        outputs,
        loaded.model_type,
        task,
        target_size=target_size,
        threshold=threshold,
        mask_threshold=mask_threshold,
        overlap_mask_area_threshold=overlap_mask_area_threshold,
        label_ids_to_fuse=set(label_ids_to_fuse or ()),
    )
    if task is Task.INSTANCE and declared is not None:
        label_map, infos = _things_only(label_map, infos, declared)
    return _to_result(loaded, task, label_map, infos, label_ids_to_fuse)


def semantic_scores(loaded: LoadedModel, outputs: Any) -> torch.Tensor:
    """``C x h x w`` class scores of the first image of ``outputs`` at the model input's
    size, from the processor's own semantic post-processing (as the pipeline)."""
    return (
        _image_processor(loaded)
        .post_process_semantic_segmentation(
            outputs, target_sizes=None, return_segmentation_scores=True
        )[0]
        .segmentation_scores
    )


def _tta_scores(
    loaded: LoadedModel, image: Image.Image, tta: str, max_size: int | None
) -> torch.Tensor:
    """``C x h x w`` class scores of ``image`` averaged over its ``tta`` views, at the
    one-pass score size (see :func:`segment`'s ``tta``)."""
    mirror = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)

    def scores(view: Image.Image, scale: float = 1.0) -> torch.Tensor:
        inputs = model_inputs(loaded, view, Task.SEMANTIC, max_size, scale=scale)
        return semantic_scores(loaded, run_model(loaded, inputs))

    if tta == "flip":
        return (scores(image) + scores(mirror).flip(-1)) / 2
    total, size = None, None
    for scale in TTA_SCALES:  # 1.0 first: its scores set the size
        for view, mirrored in ((image, False), (mirror, True)):
            logits = scores(view, scale)
            logits = logits.flip(-1) if mirrored else logits
            size = size or tuple(logits.shape[-2:])
            logits = F.interpolate(
                logits[None].float(), size=size, mode="bilinear", align_corners=False
            )[0]
            total = logits.softmax(dim=0) if total is None else total + logits.softmax(dim=0)
    return total / (2 * len(TTA_SCALES))


def _semantic_result(
    loaded: LoadedModel, scores: torch.Tensor, target_size: tuple[int, int]
) -> SegmentationResult:
    label_map = upsample_argmax(scores, target_size)
    return SegmentationResult(
        Task.SEMANTIC,
        label_map,
        segments_from_label_map(label_map, loaded.id2label),
        loaded.id2label,
    )


def _things_only(
    label_map: np.ndarray, infos: list[dict], thing_ids: frozenset[int]
) -> tuple[np.ndarray, list[dict]]:
    """Instance results of a model that declares its things: stuff segments (road, sky) are
    dropped, their pixels become 0 and the kept segments are renumbered ``1..k`` in order."""
    kept = [info for info in infos if int(info["label_id"]) in thing_ids]
    if len(kept) == len(infos):
        return label_map, infos
    lookup = np.zeros(len(infos) + 1, np.int32)
    for new_id, info in enumerate(kept, start=1):
        lookup[info["id"]] = new_id
    return lookup[label_map], [{**info, "id": lookup[info["id"]].item()} for info in kept]


# --------------------------------------------------------------------------- model input


def _image_processor(loaded: LoadedModel) -> Any:
    return getattr(loaded.processor, "image_processor", loaded.processor)


def _forward(loaded: LoadedModel, image: Image.Image, task: Task, max_size: int | None) -> Any:
    """Preprocess exactly as the pipeline does, then run the model."""
    return run_model(loaded, model_inputs(loaded, image, task, max_size))


def model_inputs(
    loaded: LoadedModel,
    image: Image.Image,
    task: Task,
    max_size: int | None = None,
    *,
    scale: float = 1.0,
) -> dict[str, Any]:
    """The model inputs of one RGB image, prepared exactly as the pipeline does (CPU tensors
    with a batch dimension of 1). Inputs of equal shapes concatenate along dim 0 into a batch
    (:mod:`segdemo.batch`). ``scale``: the processor's resize target times this
    (:func:`scaled_size`; test-time augmentation), before the ``max_size`` cap."""
    processor = _image_processor(loaded)
    kwargs: dict[str, Any] = {}
    size = processor.size
    if scale != 1.0:
        size = kwargs["size"] = scaled_size(size, scale)
    if max_size is not None:
        capped = capped_size(size, (image.height, image.width), max_size)
        if capped is not None:
            kwargs["size"] = capped
    if loaded.model_type == "oneformer":
        inputs = processor(images=[image], task_inputs=[task.value], return_tensors="pt", **kwargs)
        inputs["task_inputs"] = loaded.processor.tokenizer(
            inputs["task_inputs"],
            padding="max_length",
            max_length=loaded.model.config.task_seq_len,
            return_tensors="pt",
        )["input_ids"]
    else:
        inputs = processor(images=[image], return_tensors="pt", **kwargs)
    return dict(inputs)


def run_model(loaded: LoadedModel, inputs: dict[str, Any]) -> Any:
    """``loaded.model`` on ``inputs`` moved to its device (call under ``torch.inference_mode``)."""
    inputs = {
        k: v.to(loaded.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()
    }
    return loaded.model(**inputs)


def _size_field(size: Any):
    """``key -> value or None`` of a processor ``size`` (a dict or a ``SizeDict``)."""
    return size.get if isinstance(size, dict) else (lambda key: getattr(size, key, None))


def scaled_size(size: Any, scale: float) -> dict:
    """The processor ``size`` (as in :func:`capped_size`) times ``scale``, each side rounded
    to a multiple of 8 (at least 8)."""
    get = _size_field(size)
    keys = ("height", "width", "shortest_edge", "longest_edge")
    return {key: max(8, round(get(key) * scale / 8) * 8) for key in keys if get(key) is not None}


def capped_size(size: Any, image_hw: tuple[int, int], max_size: int) -> dict | None:
    """The processor ``size`` dict shrunk so the model input's longest side is <= ``max_size``.

    Args:
        size: the processor's ``size`` (``{"height", "width"}``, ``{"shortest_edge"[,
            "longest_edge"]}`` or ``{"longest_edge"}``; a ``SizeDict`` or dict).
        image_hw: ``(height, width)`` of the image.
        max_size: cap in pixels.

    Returns:
        A new size dict, or ``None`` when the processor's input already fits.
    """
    get = _size_field(size)
    height, width = get("height"), get("width")
    shortest, longest = get("shortest_edge"), get("longest_edge")
    if height and width:
        if max(height, width) <= max_size:
            return None
        scale = max_size / max(height, width)
        return {"height": max(1, int(height * scale)), "width": max(1, int(width * scale))}
    aspect = max(image_hw) / min(image_hw)
    if shortest and longest:
        if min(longest, shortest * aspect) <= max_size:
            return None
        return {"shortest_edge": min(shortest, max_size), "longest_edge": min(longest, max_size)}
    if shortest:
        if shortest * aspect <= max_size:
            return None
        return {"shortest_edge": max(1, int(max_size / aspect))}
    if longest:
        return None if longest <= max_size else {"longest_edge": max_size}
    return None


# --------------------------------------------------------------------------- semantic


# --------------------------------------------------------------------------- instance / panoptic


def _to_result(
    loaded: LoadedModel,
    task: Task,
    label_map: np.ndarray,
    infos: list[dict],
    label_ids_to_fuse: set[int] | None,
) -> SegmentationResult:
    """Segments with areas and boxes for a label map of segment ids ``1..n`` (0 = none)."""
    stats = {value: (area, bbox) for value, area, bbox in region_stats(label_map)} if infos else {}
    thing_ids = _thing_ids(loaded)
    segments = []
    for info in infos:
        area, bbox = stats.get(info["id"], (0, (0, 0, 0, 0)))
        label_id = int(info["label_id"])
        segments.append(
            Segment(
                id=info["id"],
                label=loaded.id2label.get(label_id, f"class_{label_id}"),
                label_id=label_id,
                score=float(info["score"]),
                area=area,
                bbox=bbox,
                is_thing=_is_thing(task, label_id, info, label_ids_to_fuse, thing_ids),
            )
        )
    return SegmentationResult(task, label_map, segments, loaded.id2label)


def _thing_ids(loaded: LoadedModel) -> set[int] | None:
    """The model's countable classes: its segdemo.json's, else its processor's metadata."""
    if loaded.spec.thing_ids is not None:
        return set(loaded.spec.thing_ids)
    metadata = getattr(_image_processor(loaded), "metadata", None)
    if isinstance(metadata, dict) and "thing_ids" in metadata:
        return {int(i) for i in metadata["thing_ids"]}
    return None


def _is_thing(
    task: Task,
    label_id: int,
    info: dict,
    label_ids_to_fuse: set[int] | None,
    thing_ids: set[int] | None,
) -> bool | None:
    """Panoptic only: stuff = the classes the caller fuses, else the model's own thing list."""
    if task is not Task.PANOPTIC:
        return None
    if label_ids_to_fuse:
        return label_id not in label_ids_to_fuse
    if thing_ids is not None:
        return label_id in thing_ids
    return None
