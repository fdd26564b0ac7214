"""Instance and panoptic post-processing at full resolution, exactly the pipeline's, in bounded memory.

    >>> label_map, segments = post_process(outputs, "mask2former", "panoptic",
    ...                                    target_size=(3000, 4000), threshold=0.9)
    >>> label_map.shape, label_map.dtype, segments[0]
    ((3000, 4000), dtype('int32'), {'id': 1, 'label_id': 17, 'was_fused': False, 'score': 0.97})

Same answers as the image processors' ``post_process_instance_segmentation`` /
``post_process_panoptic_segmentation`` of transformers 5.23 as
``pipeline("image-segmentation")`` calls them (Mask2Former, MaskFormer; OneFormer with
torchvision's resize, which the library needs and we do not), with the segments renumbered
``1..n`` in the order the processor emits them. What differs is where the pixels are
produced:

* **Panoptic** (and OneFormer instance) resize the kept queries' mask maps to the output
  size and take a per-pixel argmax of ``score * probability``; the library holds all of
  them at full resolution (``queries x H x W`` floats, 4.8 GB for 100 queries at 12 MP).
  Here :func:`segdemo.mask_bands.upsampled_winners` produces the winner map, each query's
  won area and its area at ``>= mask_threshold`` ("original area") band by band in a
  fixed budget; the overlap rule then needs no second look at the pixels.
* **Instance** (Mask2Former, MaskFormer) binarises the masks at low resolution and resizes
  them with ``nearest``, the last kept query painting over earlier ones: the label map is
  the low-resolution "last writer" map indexed by PyTorch's nearest source rows and columns.

Full-resolution memory: the ``H x W`` int32 label map plus ``budget_bytes`` of temporaries,
whatever the number of queries. The low-resolution inputs stay as the library has them
(Mask2Former's 384x384 maps: 0.6 MB per query, 1.2 MB per query on the instance path,
which keeps the library's tensor shapes for a bit-identical mask score).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from segdemo import upsample
from segdemo.mask_bands import BUDGET_BYTES, upsampled_winners
from segdemo.result import Task
from segdemo.thresholds import DEFAULT_THRESHOLDS

MASK2FORMER_SIZE = (384, 384)
"""Mask2Former's processor first resizes mask logits to this size ("preprocessed image size")."""

FAMILIES = ("mask2former", "maskformer", "oneformer")


def post_process(
    outputs: Any,
    model_type: str,
    task: Task | str,
    *,
    target_size: tuple[int, int],
    index: int = 0,
    threshold: float = DEFAULT_THRESHOLDS.threshold,
    mask_threshold: float = DEFAULT_THRESHOLDS.mask_threshold,
    overlap_mask_area_threshold: float = DEFAULT_THRESHOLDS.overlap_mask_area_threshold,
    label_ids_to_fuse: set[int] | None = None,
    budget_bytes: int = BUDGET_BYTES,
) -> tuple[np.ndarray, list[dict]]:
    """Instance or panoptic segmentation of image ``index`` of a batch's model outputs.

    Args:
        outputs: model outputs with ``class_queries_logits`` ``(B, Q, C + 1)`` and
            ``masks_queries_logits`` ``(B, Q, h, w)`` (any device).
        model_type: ``"mask2former"``, ``"maskformer"`` or ``"oneformer"`` (``config.model_type``).
        task: ``"instance"`` or ``"panoptic"``.
        target_size: ``(H, W)`` of the output (the image's size).
        index: which image of the batch.
        threshold: minimum query score (panoptic, OneFormer instance: ``>``; Mask2Former
            and MaskFormer instance: ``>=`` on score x mask score).
        mask_threshold: panoptic, OneFormer instance: value at which a pixel of a query's
            weighted mask counts in its original area.
        overlap_mask_area_threshold: panoptic, OneFormer instance: a query keeps its
            segment only if ``won area / original area`` is above this.
        label_ids_to_fuse: panoptic: classes whose segments share one id (the pipeline
            passes none).
        budget_bytes: memory for full-resolution temporaries.

    Returns:
        ``(label_map, segments)``: ``H x W`` int32 segment ids ``1..n`` (0 = none), and
        ``n`` dicts ``{"id", "label_id", "was_fused", "score"}`` (``id`` = position + 1;
        ``score`` rounded to 6 decimals, as the processor does). A fused class keeps one
        entry per fused query, as the processor's list does; its pixels carry the last id.

    Raises:
        ValueError: an unknown ``model_type`` or ``task``.
    """
    if model_type not in FAMILIES:
        raise ValueError(f"unknown model type {model_type!r}; choose one of: {', '.join(FAMILIES)}")
    task = Task.parse(task)
    if task is Task.SEMANTIC:
        raise ValueError("post_process handles instance and panoptic; use upsample_argmax")
    size = (int(target_size[0]), int(target_size[1]))
    if task is Task.INSTANCE and model_type != "oneformer":
        return _instance_by_nearest(outputs, model_type, index, size, threshold)
    if task is Task.INSTANCE:
        kept = _oneformer_instance_queries(outputs, index, threshold)
        fuse: set[int] = set()
    else:
        kept = _panoptic_queries(outputs, model_type, index, threshold)
        fuse = set(label_ids_to_fuse or ())
    planes, plane_of, scores, labels = kept
    if plane_of.numel() == 0:
        return np.zeros(size, dtype=np.int32), []
    winner, area, original = upsampled_winners(
        planes,
        plane_of,
        scores,
        size,
        mask_threshold,
        antialias=model_type == "oneformer",
        budget_bytes=budget_bytes,
    )
    new_ids, segments = _segments(labels, scores, area, original, overlap_mask_area_threshold, fuse)
    return _relabel(winner, new_ids), segments


# --------------------------------------------------------------------------- query selection


def _panoptic_queries(outputs, model_type: str, index: int, threshold: float):
    """``remove_low_and_no_objects`` and the maps that ``compute_segments`` resizes."""
    class_logits = outputs.class_queries_logits
    masks = outputs.masks_queries_logits
    num_labels = class_logits.shape[-1] - 1
    scores, labels = F.softmax(class_logits, dim=-1).max(-1)
    scores, labels = scores[index], labels[index]
    keep = torch.nonzero(labels.ne(num_labels) & (scores > threshold)).flatten()
    if model_type == "mask2former":
        planes = _resized_logits(masks, index, keep).sigmoid_()
    else:
        planes = masks[index][keep].sigmoid()
    return planes, torch.arange(keep.numel(), device=planes.device), scores[keep], labels[keep]


def _resized_logits(masks: torch.Tensor, index: int, queries: torch.Tensor) -> torch.Tensor:
    """Mask2Former's ``interpolate(masks, (384, 384))`` for some queries of one image.

    Bilinear interpolation treats maps independently, so a subset equals the rows of the
    library's whole-batch call, except with PyTorch's 3-channel single-thread kernel:
    :func:`segdemo.upsample._groups` keeps the chunks off it (or on it, for 3 queries).
    """
    total = masks.shape[1]
    out = masks.new_empty((queries.numel(), *MASK2FORMER_SIZE))
    if queries.numel() == 0:
        return out
    chunk = max(1, upsample.BUDGET_BYTES // (4 * MASK2FORMER_SIZE[0] * MASK2FORMER_SIZE[1]))
    if total == 3:  # the library interpolates these three maps in one call: do the same
        whole = F.interpolate(
            masks[index : index + 1], size=MASK2FORMER_SIZE, mode="bilinear", align_corners=False
        )
        return whole[0][queries]
    done = 0
    for group in upsample._groups(queries, chunk, total):
        out[done : done + group.numel()] = F.interpolate(
            masks[index : index + 1, group],
            size=MASK2FORMER_SIZE,
            mode="bilinear",
            align_corners=False,
        )[0]
        done += group.numel()
    return out


def _oneformer_instance_queries(outputs, index: int, threshold: float):
    """OneFormer's instance selection (demo mode): the top ``Q`` (query, class) pairs."""
    class_logits = outputs.class_queries_logits[index]
    masks = outputs.masks_queries_logits[index]
    num_queries, num_classes = class_logits.shape[0], class_logits.shape[-1] - 1
    scores = F.softmax(class_logits, dim=-1)[:, :-1]
    labels = (
        torch.arange(num_classes, device=scores.device)
        .unsqueeze(0)
        .repeat(num_queries, 1)
        .flatten(0, 1)
    )
    top_scores, top_indices = scores.flatten(0, 1).topk(num_queries, sorted=False)
    top_labels = labels[top_indices]
    top_queries = torch.div(top_indices, num_classes, rounding_mode="floor")
    keep = top_scores > threshold
    # the library passes raw mask logits (not probabilities) here, so do we
    return masks, top_queries[keep], top_scores[keep], top_labels[keep]


# --------------------------------------------------------------------------- segments


def _segments(
    labels: torch.Tensor,
    scores: torch.Tensor,
    area: torch.Tensor,
    original: torch.Tensor,
    overlap_mask_area_threshold: float,
    fuse: set[int],
) -> tuple[torch.Tensor, list[dict]]:
    """``compute_segments``' loop over queries, on counts instead of masks.

    Returns:
        ``K`` int32 new segment id of each query's pixels (0 = dropped) and the segments.
    """
    segments: list[dict] = []
    raw_of_query = [0] * labels.numel()
    stuff_memory: dict[int, int] = {}
    current = 0
    counts = zip(labels.tolist(), area.tolist(), original.tolist(), strict=True)
    for k, (label, won, total) in enumerate(counts):
        exists = won > 0 and total > 0
        # int64 / int64 tensors: a float32 ratio, compared as a Python float, as the library
        if (
            exists
            and not (torch.tensor(won) / torch.tensor(total)).item() > overlap_mask_area_threshold
        ):
            exists = False
        if not exists:
            continue
        should_fuse = label in fuse
        current = stuff_memory[label] if label in stuff_memory else current + 1
        raw_of_query[k] = current
        segments.append(
            {
                "id": current,
                "label_id": label,
                "was_fused": should_fuse,
                "score": round(scores[k].item(), 6),
            }
        )
        if should_fuse:
            stuff_memory[label] = current
    # the pipeline's masks are ``segmentation == id``; renumber by position, a raw id going
    # to the last segment that carries it (fused classes repeat theirs)
    last_position = {segment["id"]: position for position, segment in enumerate(segments, 1)}
    new_ids = torch.tensor(
        [last_position.get(raw, 0) if raw else 0 for raw in raw_of_query], dtype=torch.int32
    )
    for position, segment in enumerate(segments, 1):
        segment["id"] = position
    return new_ids, segments


def _relabel(winner: torch.Tensor, new_ids: torch.Tensor, band: int = 1 << 20) -> np.ndarray:
    """``new_ids[winner]`` in place, a million pixels at a time."""
    flat = winner.view(-1)
    for start in range(0, flat.numel(), band):
        flat[start : start + band] = new_ids[flat[start : start + band].long()]
    return winner.numpy()


# --------------------------------------------------------------------------- instance


def _instance_by_nearest(outputs, model_type: str, index: int, size, threshold: float):
    """Mask2Former / MaskFormer ``post_process_instance_segmentation`` for one image."""
    class_logits = outputs.class_queries_logits
    masks = outputs.masks_queries_logits
    if model_type == "mask2former":
        everything = torch.arange(masks.shape[1], device=masks.device)
        masks_item = _resized_logits(masks, index, everything)
    else:
        masks_item = masks[index]
    num_queries, num_classes = class_logits.shape[-2], class_logits.shape[-1] - 1
    scores = F.softmax(class_logits[index], dim=-1)[:, :-1]
    labels = (
        torch.arange(num_classes, device=scores.device)
        .unsqueeze(0)
        .repeat(num_queries, 1)
        .flatten(0, 1)
    )
    top_scores, top_indices = scores.flatten(0, 1).topk(num_queries, sorted=False)
    top_labels = labels[top_indices]
    top_queries = torch.div(top_indices, num_classes, rounding_mode="floor")
    # the library's shapes for the mask score, so that its sum rounds identically
    mask_pred = masks_item[top_queries]
    del masks_item
    positive = mask_pred > 0
    summed = mask_pred.sigmoid_().flatten(1).mul_(positive.flatten(1)).sum(1)
    del mask_pred
    mask_scores = summed / (positive.flatten(1).sum(1).float() + 1e-6)
    pred_scores = top_scores * mask_scores
    rows = _nearest_sources(positive.shape[1], size[0], positive.device)
    cols = _nearest_sources(positive.shape[2], size[1], positive.device)
    sampled_rows, sampled_cols = torch.unique(rows), torch.unique(cols)
    low_res = torch.zeros(positive.shape[1:], dtype=torch.int32, device=positive.device)
    segments: list[dict] = []
    for j in range(num_queries):
        score = pred_scores[j].item()
        # the library tests the mask after the nearest resize: only sampled pixels count
        if score >= threshold and bool(positive[j][sampled_rows][:, sampled_cols].any()):
            segments.append(
                {
                    "id": len(segments) + 1,
                    "label_id": top_labels[j].item(),
                    "was_fused": False,
                    "score": round(score, 6),
                }
            )
            low_res[positive[j]] = len(segments)  # later queries paint over earlier ones
    return _nearest_resize(low_res, rows, cols), segments


def _nearest_sources(in_size: int, out_size: int, device) -> torch.Tensor:
    """PyTorch's ``nearest`` source index of each output index (read from PyTorch itself)."""
    ramp = torch.arange(in_size, dtype=torch.float32, device=device).view(1, 1, 1, in_size)
    picked = F.interpolate(ramp, size=(1, out_size), mode="nearest")
    return picked.view(-1).long()


def _nearest_resize(
    low_res: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, band: int = 256
) -> np.ndarray:
    """``low_res[rows][:, cols]`` as an ``H x W`` int32 array, a band of rows at a time."""
    out = torch.empty((rows.numel(), cols.numel()), dtype=torch.int32)
    for start in range(0, rows.numel(), band):
        picked = low_res.index_select(0, rows[start : start + band]).index_select(1, cols)
        out[start : start + band] = picked.cpu()
    return out.numpy()
