"""OneFormer instance/panoptic post-processing without torchvision.

transformers' ``OneFormerImageProcessorPil`` resizes mask probabilities with
``torchvision.transforms.v2.functional.resize`` in ``compute_segments`` and fails with
``NameError: tvF`` when torchvision is missing (it is not a dependency here). This is
the same algorithm as ``post_process_instance_segmentation`` (demo mode, ``task_type
"instance"``) and ``post_process_panoptic_segmentation`` of transformers 5.23, with
that one resize done by :func:`resize_like_torchvision`. Every other step is the
library's, line for line, so results match the pipeline where torchvision exists.
"""

from __future__ import annotations

import torch
from torch import nn


def resize_like_torchvision(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``tvF.resize(masks, size, BILINEAR)`` for a float ``(N, h, w)`` tensor -> ``(N, H, W)``.

    torchvision v2 resizes float tensors with ``F.interpolate(..., "bilinear",
    align_corners=False, antialias=True)`` and returns the input unchanged when the
    size does not change.
    """
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    return nn.functional.interpolate(
        masks.unsqueeze(0), size=size, mode="bilinear", align_corners=False, antialias=True
    )[0]


def compute_segments(
    mask_probs: torch.Tensor,
    pred_scores: torch.Tensor,
    pred_labels: torch.Tensor,
    mask_threshold: float,
    overlap_mask_area_threshold: float,
    label_ids_to_fuse: set[int],
    target_size: tuple[int, int] | None,
) -> tuple[torch.Tensor, list[dict]]:
    """transformers' OneFormer ``compute_segments``; ids from 1, 0 = no segment."""
    height, width = target_size if target_size is not None else mask_probs.shape[1:]
    segmentation = torch.zeros((height, width), dtype=torch.int32, device=mask_probs.device)
    segments: list[dict] = []
    if target_size is not None:
        mask_probs = resize_like_torchvision(mask_probs, target_size)
    current_segment_id = 0
    mask_probs = mask_probs * pred_scores.view(-1, 1, 1)
    mask_labels = mask_probs.argmax(0)
    stuff_memory_list: dict[int, int] = {}
    for k in range(pred_labels.shape[0]):
        pred_class = pred_labels[k].item()
        should_fuse = pred_class in label_ids_to_fuse
        mask_k = mask_labels == k
        mask_k_area = mask_k.sum()
        original_area = (mask_probs[k] >= mask_threshold).sum()
        mask_exists = mask_k_area > 0 and original_area > 0
        if mask_exists and not (mask_k_area / original_area).item() > overlap_mask_area_threshold:
            mask_exists = False
        if not mask_exists:
            continue
        if pred_class in stuff_memory_list:
            current_segment_id = stuff_memory_list[pred_class]
        else:
            current_segment_id += 1
        segmentation[mask_k] = current_segment_id
        segments.append(
            {
                "id": current_segment_id,
                "label_id": pred_class,
                "was_fused": should_fuse,
                "score": round(pred_scores[k].item(), 6),
            }
        )
        if should_fuse:
            stuff_memory_list[pred_class] = current_segment_id
    return segmentation, segments


def post_process_instance(
    outputs,
    threshold: float,
    mask_threshold: float,
    overlap_mask_area_threshold: float,
    target_size,
) -> dict:
    """``OneFormerImageProcessor.post_process_instance_segmentation`` for one image (demo mode)."""
    class_queries_logits = outputs.class_queries_logits[0]
    masks_queries_logits = outputs.masks_queries_logits[0]
    num_queries, num_classes = class_queries_logits.shape[0], class_queries_logits.shape[-1] - 1
    scores = nn.functional.softmax(class_queries_logits, dim=-1)[:, :-1]
    labels = (
        torch.arange(num_classes, device=scores.device)
        .unsqueeze(0)
        .repeat(num_queries, 1)
        .flatten(0, 1)
    )
    scores_per_image, topk_indices = scores.flatten(0, 1).topk(num_queries, sorted=False)
    labels_per_image = labels[topk_indices]
    topk_indices = torch.div(topk_indices, num_classes, rounding_mode="floor")
    mask_pred = masks_queries_logits[topk_indices]
    keep = scores_per_image > threshold
    scores_per_image, labels_per_image, mask_pred = (
        scores_per_image[keep],
        labels_per_image[keep],
        mask_pred[keep],
    )
    if mask_pred.shape[0] <= 0:
        return {"segmentation": torch.zeros(target_size) - 1, "segments_info": []}
    # the library passes raw mask logits here (not sigmoid probabilities), so do we
    segmentation, segments = compute_segments(
        mask_pred,
        scores_per_image,
        labels_per_image,
        mask_threshold,
        overlap_mask_area_threshold,
        set(),
        target_size,
    )
    return {"segmentation": segmentation, "segments_info": segments}


def post_process_panoptic(
    outputs,
    threshold: float,
    mask_threshold: float,
    overlap_mask_area_threshold: float,
    label_ids_to_fuse: set[int],
    target_size,
) -> dict:
    """``OneFormerImageProcessor.post_process_panoptic_segmentation`` for one image."""
    class_queries_logits = outputs.class_queries_logits[0]
    num_labels = class_queries_logits.shape[-1] - 1
    mask_probs = outputs.masks_queries_logits[0].sigmoid()
    pred_scores, pred_labels = nn.functional.softmax(class_queries_logits, dim=-1).max(-1)
    to_keep = pred_labels.ne(num_labels) & (pred_scores > threshold)
    mask_probs, pred_scores, pred_labels = (
        mask_probs[to_keep],
        pred_scores[to_keep],
        pred_labels[to_keep],
    )
    if mask_probs.shape[0] <= 0:
        return {"segmentation": torch.zeros(target_size) - 1, "segments_info": []}
    segmentation, segments = compute_segments(
        mask_probs,
        pred_scores,
        pred_labels,
        mask_threshold,
        overlap_mask_area_threshold,
        label_ids_to_fuse,
        target_size,
    )
    return {"segmentation": segmentation, "segments_info": segments}
