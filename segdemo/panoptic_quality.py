"""Panoptic quality (PQ, SQ, RQ) with panopticapi's ``pq_compute`` semantics, vectorised.

Per image, :func:`panoptic_counts` returns a fixed-size ``(num_classes, 4)`` float64
array ``[tp, fp, fn, iou_sum]`` per class. Counts add up, so images (and processes:
``accelerator.gather_for_metrics`` then a sum) are merged by summing;
:func:`pq_from_counts` turns the total into the report.

The rules are those of panopticapi's ``pq_compute_single_core`` (Kirillov et al.):

- a predicted and a ground-truth segment of the same class match when IoU > 0.5,
  where the union leaves out the prediction's pixels on void (ground truth 0):
  ``union = pred_area + gt_area - intersection - void_overlap(pred)``; crowd
  ground-truth segments are never matched (IoU > 0.5 makes every match unique);
- an unmatched ground-truth segment is a false negative unless it is crowd;
- an unmatched prediction is a false positive unless more than half of its pixels
  lie on void plus the crowd segments of its own class;
- a class with no TP, FP or FN is left out of every mean (overall, things, stuff).

Where this module goes beyond panopticapi (which assumes COCO's files): a predicted
segment listed but absent from the map predicts nothing and is ignored (panopticapi
raises); a listed ground-truth segment without pixels is a false negative, as in
panopticapi (which takes its area from the JSON) and in COCOeval; several crowd
segments of one class in one image all absorb (COCO panoptic merges them into one,
panopticapi keeps the last listed).

torchmetrics' ``PanopticQuality`` differs in three ways: it has no crowd; it also
removes from the union the ground truth's pixels that the prediction leaves void,
and it drops unmatched ground truth lying mostly on predicted void (here a
prediction's 0 is simply "no segment", as in panopticapi); and it merges all
segments of one stuff class into one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

TP, FP, FN, IOU = range(4)
"""Columns of the ``(num_classes, 4)`` count array."""

_SHIFT = np.int64(1) << np.int64(32)  # gt id in the high half of the pair key, pred id in the low


def panoptic_counts(
    pred_map: np.ndarray,
    pred_segments: Mapping[int, int],
    gt_map: np.ndarray,
    gt_segments: Mapping[int, tuple[int, bool]],
    num_classes: int,
) -> np.ndarray:
    """PQ statistics of one image.

    Args:
        pred_map: HxW non-negative integer segment ids, 0 = no segment.
        pred_segments: ``{segment_id: class_id}`` for every non-zero id in ``pred_map``;
            class ids in ``[0, num_classes)``.
        gt_map: HxW non-negative integer segment ids (e.g. ``R + 256 G + 256² B``), 0 = void.
        gt_segments: ``{segment_id: (class_id, iscrowd)}`` for every non-zero id in ``gt_map``
            (a listed segment without pixels counts as missed).
        num_classes: number of model classes (rows of the result).

    Returns:
        ``(num_classes, 4)`` float64: per class ``[tp, fp, fn, iou_sum]`` (columns
        :data:`TP`, :data:`FP`, :data:`FN`, :data:`IOU`).

    Raises:
        ValueError: maps of different shapes, negative ids, an id in a map missing from
            its dict, or a class id outside ``[0, num_classes)``.
    """
    pred_map = np.asarray(pred_map)
    gt_map = np.asarray(gt_map)
    if pred_map.shape != gt_map.shape or pred_map.ndim != 2:
        raise ValueError(
            f"prediction is {pred_map.shape} but ground truth is {gt_map.shape}; "
            "pass two HxW segment-id maps of the same size"
        )
    for name, array in (("prediction", pred_map), ("ground truth", gt_map)):
        if not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"{name} map has dtype {array.dtype}; pass integer segment ids")
        if array.size and (int(array.min()) < 0 or int(array.max()) >= _SHIFT):
            raise ValueError(f"{name} map has ids outside [0, 2**32); segment ids are non-negative")
    counts = np.zeros((num_classes, 4), dtype=np.float64)
    if gt_map.size == 0:
        return counts

    # the one pass over the pixels: every (gt id, pred id) pair present and its pixel count
    keys, inter = np.unique(
        gt_map.astype(np.int64, copy=False) * _SHIFT + pred_map.astype(np.int64, copy=False),
        return_counts=True,
    )
    gt_of, pred_of = keys // _SHIFT, keys % _SHIFT

    gt_ids, gt_slot = np.unique(gt_of, return_inverse=True)
    pred_ids, pred_slot = np.unique(pred_of, return_inverse=True)
    gt_area = np.bincount(gt_slot, weights=inter)
    pred_area = np.bincount(pred_slot, weights=inter)
    gt_class, gt_crowd = _gt_table(gt_ids, gt_segments, num_classes)
    pred_class = _pred_table(pred_ids, pred_segments, num_classes)
    gt_real = gt_ids != 0  # void is no segment
    pred_real = pred_ids != 0  # neither is "no prediction"

    # per prediction: pixels on void, and on crowd of its own class
    pair_pred_real = pred_real[pred_slot]
    on_void = ~gt_real[gt_slot] & pair_pred_real
    void_of_pred = np.bincount(pred_slot[on_void], weights=inter[on_void], minlength=len(pred_ids))
    same_class = gt_class[gt_slot] == pred_class[pred_slot]
    on_crowd = gt_crowd[gt_slot] & same_class & pair_pred_real
    crowd_of_pred = np.bincount(
        pred_slot[on_crowd], weights=inter[on_crowd], minlength=len(pred_ids)
    )

    # matches: same class, both real, gt not crowd, IoU > 0.5
    candidate = gt_real[gt_slot] & pair_pred_real & ~gt_crowd[gt_slot] & same_class
    g, p, n = gt_slot[candidate], pred_slot[candidate], inter[candidate]
    iou = n / (pred_area[p] + gt_area[g] - n - void_of_pred[p])
    matched = iou > 0.5
    g, p, iou = g[matched], p[matched], iou[matched]
    match_class = gt_class[g]
    counts[:, TP] = np.bincount(match_class, minlength=num_classes)
    counts[:, IOU] = np.bincount(match_class, weights=iou, minlength=num_classes)

    gt_unmatched = gt_real & ~gt_crowd
    gt_unmatched[g] = False
    counts[:, FN] = np.bincount(gt_class[gt_unmatched], minlength=num_classes)
    for seg_id in set(gt_segments) - set(gt_ids.tolist()) - {0}:  # listed, no pixels: missed
        class_id, iscrowd = gt_segments[seg_id]
        if not iscrowd:
            counts[_check_class(class_id, num_classes, f"ground-truth segment {seg_id}"), FN] += 1

    pred_unmatched = pred_real.copy()
    pred_unmatched[p] = False
    # a prediction mostly on void / crowd of its class is ignored, not a false positive
    ignored = (void_of_pred + crowd_of_pred) / pred_area > 0.5
    false_pos = pred_unmatched & ~ignored
    counts[:, FP] = np.bincount(pred_class[false_pos], minlength=num_classes)
    return counts


def _gt_table(
    ids: np.ndarray, segments: Mapping[int, tuple[int, bool]], num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Class (``-1`` for void) and crowd flag of each ground-truth id present."""
    classes = np.full(len(ids), -1, dtype=np.int64)
    crowd = np.zeros(len(ids), dtype=bool)
    for slot, seg_id in enumerate(ids.tolist()):
        if seg_id == 0:
            continue
        if seg_id not in segments:
            raise ValueError(
                f"ground-truth segment id {seg_id} is in the map but not in its segments; "
                "list every non-zero id of the panoptic PNG in segments_info"
            )
        class_id, iscrowd = segments[seg_id]
        classes[slot] = _check_class(class_id, num_classes, f"ground-truth segment {seg_id}")
        crowd[slot] = bool(iscrowd)
    return classes, crowd


def _pred_table(ids: np.ndarray, segments: Mapping[int, int], num_classes: int) -> np.ndarray:
    """Class (``-2`` for "no segment", never equal to a gt class) of each predicted id present."""
    classes = np.full(len(ids), -2, dtype=np.int64)
    for slot, seg_id in enumerate(ids.tolist()):
        if seg_id == 0:
            continue
        if seg_id not in segments:
            raise ValueError(
                f"predicted segment id {seg_id} is in the map but not in its segments; "
                "pass a {segment_id: class_id} entry for every non-zero id"
            )
        classes[slot] = _check_class(segments[seg_id], num_classes, f"predicted segment {seg_id}")
    return classes


def _check_class(class_id: int, num_classes: int, what: str) -> int:
    class_id = int(class_id)
    if not 0 <= class_id < num_classes:
        raise ValueError(
            f"{what} has class {class_id}, outside [0, {num_classes}); "
            "class ids are the model's, 0..num_classes-1"
        )
    return class_id


def pq_from_counts(
    counts: np.ndarray, id2label: Mapping[int, str], thing_ids: Iterable[int]
) -> dict:
    """PQ / SQ / RQ from summed :func:`panoptic_counts`.

    Args:
        counts: ``(C, 4)`` ``[tp, fp, fn, iou_sum]`` per class, summed over images.
        id2label: ``{class_id: name}`` for ``0..C-1``.
        thing_ids: classes that are things; the others are stuff.

    Returns:
        ``pq, sq, rq`` and ``pq_things, sq_things, rq_things, pq_stuff, sq_stuff,
        rq_stuff`` (floats in [0, 1], ``None`` when no class of that group occurs);
        ``per_category`` ``{name: {pq, sq, rq, tp, fp, fn, isthing}}`` (pq/sq/rq
        ``None`` for a class with no TP, FP or FN); ``num_categories``,
        ``num_things``, ``num_stuff``: classes that entered each mean. Per class, as
        in panopticapi: ``sq = iou_sum / tp`` (0 without TP), ``rq = tp / (tp + fp/2
        + fn/2)``, ``pq = sq * rq``.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[1] != 4 or counts.shape[0] != len(id2label):
        raise ValueError(
            f"counts have shape {counts.shape} but id2label has {len(id2label)} classes; "
            "pass the (num_classes, 4) sum of panoptic_counts"
        )
    things = {int(i) for i in thing_ids}
    names = [str(id2label[i]) for i in range(len(id2label))]
    if len(set(names)) != len(names):  # keep duplicate names apart
        names = [f"{i}:{name}" for i, name in enumerate(names)]

    per_category: dict[str, dict] = {}
    groups: dict[str, list[tuple[float, float, float]]] = {"": [], "things": [], "stuff": []}
    for class_id, name in enumerate(names):
        tp, fp, fn, iou_sum = counts[class_id]
        entry: dict = {"pq": None, "sq": None, "rq": None, "tp": int(tp), "fp": int(fp)}
        entry |= {"fn": int(fn), "isthing": class_id in things}
        if tp + fp + fn > 0:
            sq = iou_sum / tp if tp > 0 else 0.0
            rq = tp / (tp + 0.5 * fp + 0.5 * fn)
            entry |= {"pq": float(sq * rq), "sq": float(sq), "rq": float(rq)}
            groups[""].append((sq * rq, sq, rq))
            groups["things" if class_id in things else "stuff"].append((sq * rq, sq, rq))
        per_category[name] = entry

    report: dict = {}
    for group, values in groups.items():
        suffix = f"_{group}" if group else ""
        for column, key in enumerate(("pq", "sq", "rq")):
            report[key + suffix] = (
                float(math.fsum(v[column] for v in values) / len(values)) if values else None
            )
    report["per_category"] = per_category
    report["num_categories"] = len(groups[""])
    report["num_things"] = len(groups["things"])
    report["num_stuff"] = len(groups["stuff"])
    return report


__all__ = ["FN", "FP", "IOU", "TP", "panoptic_counts", "pq_from_counts"]
