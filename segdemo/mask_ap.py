"""COCO mask AP through pycocotools' ``COCOeval`` (``iouType="segm"``).

No re-implementation: per image, :func:`image_record` RLE-encodes the ground-truth
masks and the detections (``pycocotools.mask.encode``; a few kB, picklable, so
processes exchange them with ``accelerate.utils.gather_object``); :func:`mask_ap`
builds the two COCO objects in memory and runs ``evaluate / accumulate / summarize``.

    records = [image_record(i, gt_masks, gt_classes, gt_crowd, masks, classes, scores), ...]
    records = gather_object(records)          # every process, padding duplicates included
    report = mask_ap(records, id2label)       # duplicates (same image_id) dropped here

COCO conventions hold as they are: a crowd ground truth is matched by IoU = overlap /
detection area and its matches are ignored; at most 100 detections per image count
(the highest scores); small / medium / large split the ground truth at 32² and 96²
pixels of mask area; a category without ground truth has no AP (``None``), its
detections are not counted anywhere.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Mapping, Sequence

import numpy as np

STATS = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")
"""Report keys, in the order of ``COCOeval.stats[:6]``."""


def masks_from_label_map(label_map: np.ndarray, segment_ids: Sequence[int]) -> np.ndarray:
    """``(M, H, W)`` bool masks ``label_map == segment_ids[m]`` (e.g. a post-processed instance map).

    Args:
        label_map: HxW integer segment ids (any value not in ``segment_ids`` is background).
        segment_ids: the ``M`` ids to cut out, in the order of their classes / scores.
    """
    label_map = np.asarray(label_map)
    ids = np.asarray(list(segment_ids), dtype=np.int64).reshape(-1, 1, 1)
    return label_map[None] == ids


def image_record(
    image_id: int | str,
    gt_masks: np.ndarray,
    gt_class_ids: Sequence[int] | np.ndarray,
    gt_iscrowd: Sequence[bool] | np.ndarray,
    pred_masks: np.ndarray,
    pred_class_ids: Sequence[int] | np.ndarray,
    pred_scores: Sequence[float] | np.ndarray,
) -> dict:
    """One image's ground truth and detections, RLE-encoded.

    Args:
        image_id: a key unique per evaluated image (an int or a file name); records
            sharing one are taken for gather padding.
        gt_masks: ``(N, H, W)`` bool (or 0/1) ground-truth instance masks.
        gt_class_ids: ``(N,)`` class ids (the keys of ``id2label`` given to :func:`mask_ap`).
        gt_iscrowd: ``(N,)`` crowd flags.
        pred_masks: ``(M, H, W)`` bool (or 0/1) predicted masks at the ground truth's size
            (a label map + segment list: :func:`masks_from_label_map`).
        pred_class_ids: ``(M,)`` class ids.
        pred_scores: ``(M,)`` confidences; only their order within a class matters.

    Returns:
        ``{"image_id", "height", "width", "gt": [...], "dt": [...]}``, with COCO
        annotation dicts (``segmentation`` as RLE with ``bytes`` counts, ``category_id``,
        ``iscrowd``, ``area`` in pixels for the ground truth; ``score`` for detections).

    Raises:
        ValueError: masks that are not ``(K, H, W)`` of one size, or lengths that differ.
    """
    gt = _masks("ground-truth", gt_masks, None)
    height, width = gt.shape[1:]
    dt = _masks("predicted", pred_masks, (height, width))
    gt_class_ids = _vector("gt_class_ids", gt_class_ids, len(gt))
    gt_iscrowd = _vector("gt_iscrowd", gt_iscrowd, len(gt))
    pred_class_ids = _vector("pred_class_ids", pred_class_ids, len(dt))
    pred_scores = _vector("pred_scores", pred_scores, len(dt))
    gt_rles, dt_rles = _encode(gt), _encode(dt)
    gt_areas = gt.reshape(len(gt), -1).sum(axis=1)
    return {
        "image_id": image_id if isinstance(image_id, str) else int(image_id),
        "height": int(height),
        "width": int(width),
        "gt": [
            {"segmentation": rle, "category_id": int(c), "iscrowd": int(bool(k)), "area": float(a)}
            for rle, c, k, a in zip(gt_rles, gt_class_ids, gt_iscrowd, gt_areas, strict=True)
        ],
        "dt": [
            {"segmentation": rle, "category_id": int(c), "score": float(s)}
            for rle, c, s in zip(dt_rles, pred_class_ids, pred_scores, strict=True)
        ],
    }


def _masks(what: str, masks: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    masks = np.asarray(masks)
    if masks.ndim != 3 or (size is not None and masks.shape[1:] != size):
        expected = (
            "(K, H, W)" if size is None else f"(K, {size[0]}, {size[1]}) like the ground truth"
        )
        raise ValueError(f"{what} masks have shape {masks.shape}; pass {expected} masks")
    return masks.astype(bool, copy=False)


def _vector(name: str, values, length: int) -> list:
    values = np.asarray(values).reshape(-1).tolist()
    if len(values) != length:
        raise ValueError(f"{name} has {len(values)} values for {length} masks; pass one per mask")
    return values


def _encode(masks: np.ndarray) -> list[dict]:
    from pycocotools import mask as mask_utils

    if len(masks) == 0:
        return []
    # pycocotools wants (H, W, K) uint8 in Fortran order
    return mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))


def mask_ap(records: Sequence[dict], id2label: Mapping[int, str]) -> dict:
    """COCO mask AP of :func:`image_record` records.

    Args:
        records: one per image; records repeating an ``image_id`` (the padding
            ``gather_object`` adds on uneven splits) are dropped, the first one kept.
        id2label: ``{class_id: name}``; its keys are the COCO category ids (any ints).

    Returns:
        ``ap, ap50, ap75, ap_small, ap_medium, ap_large`` (COCOeval's ``stats[:6]``,
        floats in [0, 1]; COCO's -1, "nothing to measure", becomes ``None``),
        ``per_category`` ``{name: ap or None}`` (AP@[.5:.95], all areas, 100 detections),
        ``num_images`` (distinct images) and ``num_duplicates`` (records dropped).

    Raises:
        ValueError: a class id that is not a key of ``id2label``.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    unique: dict[int | str, dict] = {}
    for record in records:
        unique.setdefault(record["image_id"], record)
    categories = [{"id": int(c), "name": str(n)} for c, n in sorted(id2label.items())]
    known = {c["id"] for c in categories}
    images, gt_anns, dt_anns = [], [], []
    # COCO image ids 1..N, whatever the records' keys
    for image_id, (key, record) in enumerate(unique.items(), start=1):
        images.append({"id": image_id, "height": record["height"], "width": record["width"]})
        for kind, out in (("gt", gt_anns), ("dt", dt_anns)):
            for ann in record[kind]:
                if ann["category_id"] not in known:
                    raise ValueError(
                        f"image {key}: {'ground-truth' if kind == 'gt' else 'predicted'} class "
                        f"{ann['category_id']} is not in id2label ({len(known)} classes); "
                        "use the model's class ids"
                    )
                # annotation ids start at 1: COCOeval reads id 0 as "unmatched"
                out.append(ann | {"image_id": image_id, "id": len(out) + 1})

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "annotations": gt_anns, "categories": categories}
        coco_gt.createIndex()
        if dt_anns:
            coco_dt = coco_gt.loadRes([dict(ann) for ann in dt_anns])
        else:  # loadRes refuses an empty list; no detections is AP 0 wherever there is ground truth
            coco_dt = COCO()
            coco_dt.dataset = {"images": images, "annotations": [], "categories": categories}
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iouType="segm")
        evaluator.params.imgIds = [image["id"] for image in images]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()

    report: dict = {
        key: _clean(value) for key, value in zip(STATS, evaluator.stats[:6], strict=True)
    }
    # precision: (iou thresholds, recall points, categories, areas, max dets); area "all", 100 dets
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    names = [c["name"] for c in categories]
    if len(set(names)) != len(names):  # keep duplicate names apart
        names = [f"{c['id']}:{c['name']}" for c in categories]
    name_of = {c["id"]: name for c, name in zip(categories, names, strict=True)}
    per_category = dict.fromkeys(names)
    for k, cat_id in enumerate(evaluator.params.catIds):  # COCOeval's order: sorted ids
        values = precision[:, :, k]
        values = values[values > -1]  # -1: no ground truth of this category
        per_category[name_of[cat_id]] = float(values.mean()) if values.size else None
    report["per_category"] = per_category
    report["num_images"] = len(unique)
    report["num_duplicates"] = len(records) - len(unique)
    return report


def _clean(value: float) -> float | None:
    value = float(value)
    return None if value < 0 or math.isnan(value) else value


__all__ = ["STATS", "image_record", "mask_ap", "masks_from_label_map"]
