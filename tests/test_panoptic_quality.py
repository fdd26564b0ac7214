"""Panoptic quality: hand-computed cases, parity with torchmetrics and with panopticapi.

Parity sets are random multi-image panoptic maps with things and stuff. torchmetrics
has no crowd, merges all segments of a stuff class, and also treats a prediction's
void differently (see segdemo.panoptic_quality), so its sets are crowd-free with one
segment per stuff class and predictions that leave only ground-truth void empty.
panopticapi (the ``panopticapi-lite`` wheel, a copy of cocodataset/panopticapi; run
only where it is installed) is compared with crowd and uncovered predictions too.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from segdemo.panoptic_quality import FN, FP, IOU, TP, panoptic_counts, pq_from_counts

ID2LABEL = {0: "sky", 1: "car", 2: "road", 3: "person", 4: "bike"}
THINGS = (1, 3, 4)
STUFF = (0, 2)
C = len(ID2LABEL)


def _box(shape, top, left, height, width):
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + height, left : left + width] = True
    return mask


def _counts_row(counts, class_id):
    tp, fp, fn, iou = counts[class_id]
    return int(tp), int(fp), int(fn), round(float(iou), 12)


# --------------------------------------------------------------------------- hand-computed


def test_perfect_prediction_is_all_true_positives():
    gt = np.zeros((6, 8), dtype=np.int32)
    gt[:, :4], gt[:, 4:] = 1, 2
    gt[1:3, 1:3] = 3
    segments = {1: (0, False), 2: (2, False), 3: (1, False)}
    counts = panoptic_counts(gt, {k: v[0] for k, v in segments.items()}, gt, segments, C)
    assert counts[[0, 1, 2], TP].tolist() == [1, 1, 1]
    assert counts[:, [FP, FN]].sum() == 0
    report = pq_from_counts(counts, ID2LABEL, THINGS)
    assert (report["pq"], report["sq"], report["rq"]) == (1.0, 1.0, 1.0)
    assert report["num_categories"] == 3  # person and bike never occur: left out of the mean
    assert report["per_category"]["person"]["pq"] is None


def test_union_leaves_out_the_predictions_void_pixels():
    # gt car 4x4 = 16 px on void; the prediction covers it plus 8 void pixels
    gt = np.zeros((6, 6), dtype=np.int32)
    gt[1:5, 1:5] = 7
    pred = np.zeros_like(gt)
    pred[1:5, 1:5] = 1
    pred[5, 0:6], pred[0, 1:3] = 1, 1
    counts = panoptic_counts(pred, {1: 1}, gt, {7: (1, False)}, C)
    # union = 24 + 16 - 16 - 8 = 16 -> IoU 1
    assert _counts_row(counts, 1) == (1, 0, 0, 1.0)


def test_void_adjusted_iou_decides_the_match():
    # gt car 6 px; prediction 4 px on it + 3 px on void: IoU = 4 / (7 + 6 - 4 - 3) = 2/3
    gt = np.zeros((3, 6), dtype=np.int32)
    gt[0, :6] = 5
    pred = np.zeros_like(gt)
    pred[0, :4] = 2
    pred[1, :3] = 2
    counts = panoptic_counts(pred, {2: 1}, gt, {5: (1, False)}, C)
    assert _counts_row(counts, 1) == (1, 0, 0, round(2 / 3, 12))


def test_iou_of_exactly_half_is_no_match():
    # gt car 8 px, prediction 4 px inside it (IoU 0.5): one FN and one FP
    gt = np.zeros((2, 4), dtype=np.int32) + 3
    pred = np.zeros_like(gt)
    pred[0] = 9
    counts = panoptic_counts(pred, {9: 1}, gt, {3: (1, False)}, C)
    assert _counts_row(counts, 1) == (0, 1, 1, 0.0)
    # sq is 0 without TP, and the class still enters the mean
    report = pq_from_counts(counts, ID2LABEL, THINGS)
    assert report["per_category"]["car"] | {} == {
        "pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 1, "fn": 1, "isthing": True
    }  # fmt: skip
    assert report["pq"] == 0.0 and report["num_categories"] == 1


@pytest.mark.parametrize(
    ("on_void", "is_fp"),
    [
        (5, 1),  # exactly half on void: still a false positive
        (6, 0),  # more than half on void: ignored
    ],
)
def test_prediction_half_on_void(on_void, is_fp):
    # a 10-px "bike" prediction: `on_void` px on void, the rest on gt road (class 2)
    gt = np.zeros((1, 20), dtype=np.int32)
    gt[0, 10:] = 4  # road, 10 px
    pred = np.zeros_like(gt)
    pred[0, 10 - on_void : 20 - on_void] = 1
    counts = panoptic_counts(pred, {1: 4}, gt, {4: (2, False)}, C)
    assert counts[4, FP] == is_fp
    assert _counts_row(counts, 2) == (0, 0, 1, 0.0)  # road unmatched


def test_crowd_absorbs_predictions_of_its_class_only():
    # crowd car 4x5 = 20 px, road elsewhere; predictions: a car 12 px on the crowd + 8 px on
    # road (ignored: 12/20 > 0.5 on crowd), a person of the same shape elsewhere on the crowd
    gt = np.full((10, 10), 1, dtype=np.int32)  # road
    gt[0:4, 0:5] = 2  # crowd car
    gt_segments = {1: (2, False), 2: (1, True)}
    pred = np.zeros_like(gt)
    pred[0:3, 0:4] = 10  # car: 12 px on crowd
    pred[4:6, 0:4] = 10  # + 8 px on road
    pred[3, 0:5] = 11  # person: 5 px on crowd
    pred_segments = {10: 1, 11: 3}
    counts = panoptic_counts(pred, pred_segments, gt, gt_segments, C)
    assert _counts_row(counts, 1) == (0, 0, 0, 0.0)  # crowd is never FN; the car is absorbed
    assert counts[3, FP] == 1  # crowd of another class absorbs nothing
    assert _counts_row(counts, 2) == (0, 0, 1, 0.0)  # road: nothing predicted on it


def test_crowd_plus_void_together_absorb():
    # 10-px car prediction: 3 px on void + 3 px on crowd car + 4 px on road -> 6/10 > 0.5
    gt = np.zeros((1, 20), dtype=np.int32)
    gt[0, 3:6] = 8  # crowd car
    gt[0, 6:] = 9  # road
    pred = np.zeros_like(gt)
    pred[0, 0:10] = 1
    counts = panoptic_counts(pred, {1: 1}, gt, {8: (1, True), 9: (2, False)}, C)
    assert counts[1, FP] == 0 and counts[1, FN] == 0


def test_a_crowd_segment_is_never_matched():
    gt = np.full((4, 4), 6, dtype=np.int32)
    pred = np.full((4, 4), 1, dtype=np.int32)
    counts = panoptic_counts(pred, {1: 1}, gt, {6: (1, True)}, C)
    assert counts.sum() == 0  # no TP, the crowd is no FN, the prediction lies wholly on crowd


def test_listed_segments_without_pixels():
    # a listed prediction without pixels predicts nothing; a listed ground truth without
    # pixels is missed (panopticapi counts every segment of segments_info), unless crowd
    gt = np.full((3, 3), 1, dtype=np.int32)
    gt_segments = {1: (0, False), 5: (3, False), 6: (4, True)}
    counts = panoptic_counts(gt, {1: 0, 2: 3}, gt, gt_segments, C)
    assert counts[:, TP].sum() == 1 and counts[:, FP].sum() == 0
    assert counts[:, FN].tolist() == [0, 0, 0, 1, 0]


def test_things_and_stuff_means_and_absent_classes():
    counts = np.zeros((C, 4))
    counts[0] = [2, 0, 0, 1.8]  # sky: sq 0.9, rq 1
    counts[1] = [1, 1, 0, 0.6]  # car: sq 0.6, rq 1/1.5
    counts[3] = [0, 0, 2, 0.0]  # person: 0
    report = pq_from_counts(counts, ID2LABEL, THINGS)
    car = 0.6 / 1.5
    assert report["pq"] == pytest.approx((0.9 + car + 0.0) / 3)
    assert report["pq_things"] == pytest.approx(car / 2)
    assert report["sq_things"] == pytest.approx(0.3)  # person's sq is 0 (no TP) and counts
    assert report["pq_stuff"] == pytest.approx(0.9)  # road is absent: left out
    assert (report["num_categories"], report["num_things"], report["num_stuff"]) == (3, 2, 1)
    assert report["per_category"]["road"]["pq"] is None
    assert report["per_category"]["bike"]["tp"] == 0
    empty = pq_from_counts(np.zeros((C, 4)), ID2LABEL, THINGS)
    assert empty["pq"] is None and empty["pq_stuff"] is None
    json.dumps(report, allow_nan=False)


def test_counts_sum_over_images():
    rng = np.random.default_rng(3)
    images = [_random_image(rng, crowd=True, cover=False) for _ in range(4)]
    per_image = [panoptic_counts(*image, C) for image in images]
    # pq_from_counts of the sum = what training gets after gather_for_metrics + sum
    total = np.sum(per_image, axis=0)
    assert total.shape == (C, 4) and total.dtype == np.float64
    assert pq_from_counts(total, ID2LABEL, THINGS)["num_categories"] > 0


@pytest.mark.parametrize(
    ("pred", "pred_segments", "gt", "gt_segments", "message"),
    [
        # shapes differ
        (np.zeros((2, 2), int), {}, np.zeros((2, 3), int), {}, "same size"),
        # a predicted id without its class
        (np.ones((2, 2), int), {}, np.zeros((2, 2), int), {}, "predicted segment id 1"),
        # a ground-truth id missing from segments_info
        (np.zeros((2, 2), int), {}, np.ones((2, 2), int), {}, "segments_info"),
        # a class outside 0..C-1
        (np.ones((2, 2), int), {1: C}, np.zeros((2, 2), int), {}, "outside [0, 5)"),
        # float maps
        (np.zeros((2, 2)), {}, np.zeros((2, 2), int), {}, "integer segment ids"),
    ],
)
def test_bad_input_is_one_line(pred, pred_segments, gt, gt_segments, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(")", r"\)")):
        panoptic_counts(pred, pred_segments, gt, gt_segments, C)


# --------------------------------------------------------------------------- random sets


def _random_image(rng, *, crowd: bool, cover: bool, keep_hidden: bool = False, shape=(24, 32)):
    """One random (pred_map, pred_segments, gt_map, gt_segments).

    gt: one segment per stuff class (vertical bands), 1-4 thing boxes, a void box, and
    optionally one crowd box per thing class. pred: jittered gt things (some with the
    wrong class or dropped), a few spurious boxes, stuff bands moved; ``cover`` fills the
    prediction everywhere except on gt void (what torchmetrics parity needs).
    """
    h, w = shape
    gt = np.zeros(shape, dtype=np.int64)
    gt_segments: dict[int, tuple[int, bool]] = {}
    cut = int(rng.integers(w // 4, 3 * w // 4))
    gt[:, :cut], gt[:, cut:] = 1, 2
    gt_segments |= {1: (0, False), 2: (2, False)}
    pred = np.zeros(shape, dtype=np.int64)
    pred_segments: dict[int, int] = {}
    pcut = cut + int(rng.integers(-w // 3, w // 3 + 1))
    pred[:, : max(pcut, 1)], pred[:, max(pcut, 1) :] = 1, 2
    pred_segments |= {1: 0, 2: 2}
    next_gt, next_pred = 1000, 50
    boxes = []
    for _ in range(int(rng.integers(1, 5))):
        bh, bw = int(rng.integers(3, 10)), int(rng.integers(3, 10))
        top, left = int(rng.integers(0, h - bh)), int(rng.integers(0, w - bw))
        cls = int(rng.choice(THINGS))
        gt[top : top + bh, left : left + bw] = next_gt
        gt_segments[next_gt] = (cls, False)
        next_gt += 1
        boxes.append((top, left, bh, bw, cls))
    if crowd:
        for cls in THINGS:
            if rng.random() < 0.4:
                bh, bw = int(rng.integers(3, 8)), int(rng.integers(3, 8))
                top, left = int(rng.integers(0, h - bh)), int(rng.integers(0, w - bw))
                gt[top : top + bh, left : left + bw] = next_gt
                gt_segments[next_gt] = (cls, True)
                next_gt += 1
                boxes.append((top, left, bh, bw, cls))
    vh, vw = int(rng.integers(2, 9)), int(rng.integers(2, 12))
    vt, vl = int(rng.integers(0, h - vh)), int(rng.integers(0, w - vw))
    gt[vt : vt + vh, vl : vl + vw] = 0
    for top, left, bh, bw, cls in boxes:
        if rng.random() < 0.15:
            continue  # missed
        dt, dl = (int(v) for v in rng.integers(-2, 3, size=2))
        dh, dw = (int(v) for v in rng.integers(-2, 3, size=2))
        if rng.random() < 0.15:
            cls = int(rng.choice(THINGS))  # wrong class
        t, lft = max(top + dt, 0), max(left + dl, 0)
        pred[t : t + max(bh + dh, 1), lft : lft + max(bw + dw, 1)] = next_pred
        pred_segments[next_pred] = cls
        next_pred += 1
    for _ in range(int(rng.integers(0, 3))):  # spurious things
        bh, bw = int(rng.integers(2, 7)), int(rng.integers(2, 7))
        top, left = int(rng.integers(0, h - bh)), int(rng.integers(0, w - bw))
        pred[top : top + bh, left : left + bw] = next_pred
        pred_segments[next_pred] = int(rng.choice(THINGS))
        next_pred += 1
    if not cover:
        for _ in range(int(rng.integers(0, 3))):  # uncovered holes, anywhere
            bh, bw = int(rng.integers(2, 8)), int(rng.integers(2, 8))
            top, left = int(rng.integers(0, h - bh)), int(rng.integers(0, w - bw))
            pred[top : top + bh, left : left + bw] = 0
    else:
        pred[gt == 0] = np.where(rng.random() < 0.5, 0, pred[gt == 0])
    present = set(np.unique(pred).tolist())
    pred_segments = {k: v for k, v in pred_segments.items() if k in present}
    if not keep_hidden:  # boxes painted over entirely stay listed only for panopticapi
        gt_present = set(np.unique(gt).tolist())
        gt_segments = {k: v for k, v in gt_segments.items() if k in gt_present}
    return pred, pred_segments, gt, gt_segments


def _to_colors(seg_map, classes, void_class):
    """Our (map, {id: class}) -> torchmetrics' (H, W, 2) (category, instance) colors."""
    lookup = {0: void_class} | classes
    cat = np.vectorize(lambda i: lookup[i])(seg_map) if seg_map.size else seg_map
    return np.stack([cat, seg_map], axis=-1)


@pytest.mark.parametrize("seed", range(6))
def test_parity_with_torchmetrics(seed):
    import torch
    from torchmetrics.detection import PanopticQuality

    rng = np.random.default_rng(seed)
    images = [_random_image(rng, crowd=False, cover=True) for _ in range(5)]
    metric = PanopticQuality(
        things=set(THINGS),
        stuffs=set(STUFF),
        allow_unknown_preds_category=True,  # our "no segment" is its void
        return_sq_and_rq=True,
        return_per_class=True,
    )
    summary = PanopticQuality(
        things=set(THINGS),
        stuffs=set(STUFF),
        allow_unknown_preds_category=True,
        return_sq_and_rq=True,
    )
    ours = np.zeros((C, 4))
    for pred, pred_segments, gt, gt_segments in images:
        ours += panoptic_counts(pred, pred_segments, gt, gt_segments, C)
        gt_classes = {k: v[0] for k, v in gt_segments.items()}
        p = torch.from_numpy(_to_colors(pred, pred_segments, C))[None]
        t = torch.from_numpy(_to_colors(gt, gt_classes, C))[None]
        metric.update(p, t)
        summary.update(p, t)
    # torchmetrics keeps things (sorted) then stuff (sorted)
    order = sorted(THINGS) + sorted(STUFF)
    theirs = np.zeros((C, 4))
    for slot, class_id in enumerate(order):
        theirs[class_id] = [
            float(metric.true_positives[slot]),
            float(metric.false_positives[slot]),
            float(metric.false_negatives[slot]),
            float(metric.iou_sum[slot]),
        ]
    np.testing.assert_array_equal(ours[:, :IOU], theirs[:, :IOU])
    # torchmetrics divides the areas in float32 before summing in float64
    np.testing.assert_allclose(ours[:, IOU], theirs[:, IOU], rtol=1e-6, atol=0)
    assert ours[:, [TP, FP, FN]].sum(axis=0).min() > 0  # the sets exercise every column

    report = pq_from_counts(ours, ID2LABEL, THINGS)
    per_class = metric.compute().numpy()  # (C, 3) pq, sq, rq in `order`
    for slot, class_id in enumerate(order):
        entry = report["per_category"][ID2LABEL[class_id]]
        if entry["pq"] is not None:
            assert [entry["pq"], entry["sq"], entry["rq"]] == pytest.approx(
                per_class[slot].tolist()
            )
    assert [report["pq"], report["sq"], report["rq"]] == pytest.approx(summary.compute().tolist())


@pytest.mark.parametrize("seed", range(6))
def test_parity_with_panopticapi(seed, tmp_path, capsys):
    evaluation = pytest.importorskip(
        "panopticapi.evaluation", reason="pip install --no-deps panopticapi-lite==0.2.0"
    )
    rng = np.random.default_rng(100 + seed)
    images = [_random_image(rng, crowd=True, cover=False, keep_hidden=True) for _ in range(5)]
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    categories = {c: {"id": c, "name": n, "isthing": int(c in THINGS)} for c, n in ID2LABEL.items()}
    annotation_set = []
    ours = np.zeros((C, 4))
    for index, (pred, pred_segments, gt, gt_segments) in enumerate(images):
        ours += panoptic_counts(pred, pred_segments, gt, gt_segments, C)
        name = f"{index}.png"
        for folder, seg_map in (("gt", gt), ("pred", pred)):
            rgb = np.stack([seg_map % 256, seg_map // 256 % 256, seg_map // 65536], -1)
            Image.fromarray(rgb.astype(np.uint8)).save(tmp_path / folder / name)
        gt_ann = {
            "image_id": index,
            "file_name": name,
            "segments_info": [
                {"id": k, "category_id": c, "iscrowd": int(crowd), "area": int((gt == k).sum())}
                for k, (c, crowd) in gt_segments.items()
            ],
        }
        pred_ann = {
            "image_id": index,
            "file_name": name,
            "segments_info": [{"id": k, "category_id": c} for k, c in pred_segments.items()],
        }
        annotation_set.append((gt_ann, pred_ann))
    stat = evaluation.pq_compute_single_core(
        0, annotation_set, str(tmp_path / "gt"), str(tmp_path / "pred"), categories
    )
    capsys.readouterr()  # panopticapi prints progress
    theirs = np.array(
        [[stat[c].tp, stat[c].fp, stat[c].fn, stat[c].iou] for c in range(C)], dtype=np.float64
    )
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)
    report = pq_from_counts(ours, ID2LABEL, THINGS)
    for isthing, key in ((None, ""), (True, "_things"), (False, "_stuff")):
        group = [c for c in range(C) if isthing is None or (c in THINGS) == isthing]
        if not ours[group, :3].any():
            continue  # panopticapi divides by zero for an empty group
        summary, _ = stat.pq_average(categories, isthing=isthing)
        assert report["pq" + key] == pytest.approx(summary["pq"])
        assert report["sq" + key] == pytest.approx(summary["sq"])
        assert report["rq" + key] == pytest.approx(summary["rq"])
