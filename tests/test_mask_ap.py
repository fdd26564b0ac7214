"""COCO mask AP (pycocotools' COCOeval) on constructed predictions with known AP."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from segdemo.mask_ap import image_record, mask_ap, masks_from_label_map

ID2LABEL = {0: "car", 1: "person"}
SIZE = (64, 64)


def _box(top, left, height, width, size=SIZE):
    mask = np.zeros(size, dtype=bool)
    mask[top : top + height, left : left + width] = True
    return mask


def _record(image_id, gts, dts, size=SIZE):
    """gts: [(mask, class, crowd)], dts: [(mask, class, score)]."""
    empty = np.zeros((0, *size), dtype=bool)
    return image_record(
        image_id,
        np.stack([g[0] for g in gts]) if gts else empty,
        [g[1] for g in gts],
        [g[2] for g in gts],
        np.stack([d[0] for d in dts]) if dts else empty,
        [d[1] for d in dts],
        [d[2] for d in dts],
    )


A, B, C = _box(0, 0, 20, 20), _box(30, 30, 20, 20), _box(0, 40, 20, 20)
# COCO interpolates precision at 101 recall points: 51 of them at recall <= 0.5
HALF_THEN_TWO_THIRDS = (51 * 1.0 + 50 * 2 / 3) / 101


@pytest.mark.parametrize(
    ("dts", "expected"),
    [
        # perfect: both cars found, nothing else
        ([(A, 0, 0.9), (B, 0, 0.8)], 1.0),
        # hit, miss, hit: precision 1 up to recall 0.5, then 2/3
        ([(A, 0, 0.9), (C, 0, 0.8), (B, 0, 0.7)], HALF_THEN_TWO_THIRDS),
        # the false positive ranked first: precision 2/3 at every recall
        ([(C, 0, 0.95), (A, 0, 0.9), (B, 0, 0.7)], 2 / 3),
        # a false positive ranked last costs nothing
        ([(A, 0, 0.9), (B, 0, 0.8), (C, 0, 0.1)], 1.0),
        # only half the cars found
        ([(A, 0, 0.9)], 51 / 101),
        # the right box with the wrong class
        ([(A, 1, 0.9), (B, 0, 0.8)], 51 / 101),
        # nothing predicted
        ([], 0.0),
    ],
)
def test_known_rankings(dts, expected):
    report = mask_ap([_record(1, [(A, 0, False), (B, 0, False)], dts)], ID2LABEL)
    assert report["ap"] == pytest.approx(expected, abs=1e-12)
    assert report["ap50"] == pytest.approx(expected, abs=1e-12)
    assert report["per_category"]["car"] == pytest.approx(expected, abs=1e-12)
    assert report["per_category"]["person"] is None  # no person in the ground truth
    json.dumps(report, allow_nan=False)


def test_iou_thresholds():
    # a 62-px prediction inside a 100-px car: IoU 0.62 is a match at 0.50, 0.55 and 0.60 only
    gt = _box(0, 0, 10, 10)
    pred = _box(0, 0, 6, 10)
    pred[6, :2] = True
    report = mask_ap([_record(7, [(gt, 0, False)], [(pred, 0, 0.5)])], ID2LABEL)
    assert report["ap50"] == pytest.approx(1.0) and report["ap75"] == 0.0
    assert report["ap"] == pytest.approx(3 / 10)


def test_area_ranges():
    # 10x10 = 100 px is small (< 32²), 40x40 = 1600 px is medium, nothing large
    small, medium = _box(0, 0, 10, 10), _box(20, 20, 40, 40)
    record = _record(1, [(small, 0, False), (medium, 1, False)], [(small, 0, 0.9)])
    report = mask_ap([record], ID2LABEL)
    assert report["ap_small"] == pytest.approx(1.0)
    assert report["ap_medium"] == 0.0  # the person was missed
    assert report["ap_large"] is None  # no ground truth that large: COCO's -1
    assert report["ap"] == pytest.approx(0.5)


def test_crowd_ground_truth_absorbs_detections():
    # a confident car on the crowd region is neither TP nor FP; the crowd is no FN
    crowd = _box(30, 0, 30, 60)
    dts = [(_box(35, 5, 10, 10), 0, 0.99), (A, 0, 0.5)]
    report = mask_ap([_record(1, [(A, 0, False), (crowd, 0, True)], dts)], ID2LABEL)
    assert report["ap"] == pytest.approx(1.0)


def test_non_contiguous_category_ids():
    id2label = {3: "cat", 17: "dog", 90: "bird"}
    records = [
        _record(10, [(A, 3, False), (B, 17, False)], [(A, 3, 0.9), (C, 17, 0.8)]),
        _record(20, [(B, 3, False)], [(B, 3, 0.7), (A, 90, 0.6)]),  # a bird with no gt bird
    ]
    report = mask_ap(records, id2label)
    assert report["per_category"] == {"cat": pytest.approx(1.0), "dog": 0.0, "bird": None}
    assert report["ap"] == pytest.approx(0.5)
    assert report["num_images"] == 2


def test_class_zero_is_a_category():
    # COCO ids usually start at 1; ours start at 0 and must count like any other
    report = mask_ap([_record(1, [(A, 0, False)], [(A, 0, 0.9)])], ID2LABEL)
    assert report["per_category"]["car"] == pytest.approx(1.0)


def test_gather_padding_duplicates_are_dropped():
    # accelerate's gather_object repeats the last samples to even out processes
    records = [
        _record(1, [(A, 0, False)], [(A, 0, 0.9)]),
        _record(2, [(B, 0, False)], []),
    ]
    once = mask_ap(records, ID2LABEL)
    padded = mask_ap([*records, records[1], records[1]], ID2LABEL)
    assert padded == once | {"num_duplicates": 2}
    assert once["ap"] == pytest.approx(51 / 101)  # counted twice, the miss would give 1/3 recall


def test_image_keys_may_be_file_names():
    records = [
        _record("b.png", [(A, 0, False)], [(A, 0, 0.9)]),
        _record("a.png", [(B, 0, False)], []),
    ]
    report = mask_ap([*records, records[0]], ID2LABEL)
    assert report["ap"] == pytest.approx(51 / 101)
    assert (report["num_images"], report["num_duplicates"]) == (2, 1)


def test_records_are_small_and_picklable():
    masks = np.stack([_box(0, 0, 200, 300, (480, 640)), _box(100, 100, 50, 50, (480, 640))])
    record = image_record(5, masks, [0, 1], [0, 0], masks, [0, 1], np.array([0.9, 0.8]))
    blob = pickle.dumps(record)
    assert len(blob) < 2000  # vs 600 kB of boolean masks
    assert pickle.loads(blob) == record
    assert record["gt"][0]["area"] == 200 * 300
    assert (record["height"], record["width"]) == (480, 640)


def test_masks_from_label_map():
    label_map = np.array([[-1, 4, 4], [7, 7, -1]])
    masks = masks_from_label_map(label_map, [7, 4])
    assert masks.shape == (2, 2, 3) and masks.dtype == bool
    assert masks[0].tolist() == [[False, False, False], [True, True, False]]
    assert masks[1].sum() == 2
    assert masks_from_label_map(label_map, []).shape == (0, 2, 3)


def test_no_images():
    report = mask_ap([], ID2LABEL)
    assert report["ap"] is None and report["num_images"] == 0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        # predictions at another size than the ground truth
        (lambda: image_record(1, np.zeros((1, 4, 4)), [0], [0], np.zeros((1, 4, 5)), [0], [1.0]),
         r"\(K, 4, 4\) like the ground truth"),
        # a single HxW mask instead of a stack
        (lambda: image_record(1, np.zeros((4, 4)), [0], [0], np.zeros((0, 4, 4)), [], []),
         r"\(K, H, W\)"),
        # one class id too few
        (lambda: image_record(1, np.zeros((2, 4, 4)), [0], [0, 0], np.zeros((0, 4, 4)), [], []),
         "gt_class_ids has 1 values for 2 masks"),
        # a class the dataset does not have
        (lambda: mask_ap([_record(3, [(A, 0, False)], [(A, 5, 0.9)])], ID2LABEL),
         "image 3: predicted class 5 is not in id2label"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line(call, message):
    with pytest.raises(ValueError, match=message):
        call()
