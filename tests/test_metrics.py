"""segdemo.metrics against hand-computed values, an independent implementation of
🤗 evaluate's ``mean_iou`` algorithm, and torchmetrics."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassJaccardIndex

from segdemo.labels import IGNORE_INDEX
from segdemo.metrics import ConfusionMatrix, MetricInputError
from tests.metric_helpers import confusion_matrix, mean_iou

NAN = math.nan
KEYS = {
    "mean_iou",
    "mean_accuracy",
    "overall_accuracy",
    "per_category_iou",
    "per_category_accuracy",
}


# --- independent reference: evaluate's documented per-image histogram algorithm ------------
def reference_mean_iou(preds, refs, num_labels, ignore_index, label_map=None, reduce_labels=False):
    """Per image: map/reduce the reference, drop ignore pixels, then three
    ``np.histogram(bins=num_labels, range=(0, num_labels - 1))`` (intersection,
    prediction, label), summed in float64 over images, divided at the end."""
    totals = np.zeros((3, num_labels), dtype=np.float64)  # intersect, pred, label
    for pred, ref in zip(preds, refs, strict=True):
        pred = np.array(pred)
        ref = np.array(ref)
        if label_map:
            original = ref.copy()
            for old, new in label_map.items():
                ref[original == old] = new
        if reduce_labels:
            ref[ref == 0] = 255
            ref = ref - 1
            ref[ref == 254] = 255
        keep = ref != ignore_index
        pred, ref = pred[keep], ref[keep]
        hist = lambda x: np.histogram(x, bins=num_labels, range=(0, num_labels - 1))[0]  # noqa: E731
        totals += [hist(pred[pred == ref]), hist(pred), hist(ref)]
    intersect, area_pred, area_label = totals
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = intersect / (area_pred + area_label - intersect)
        acc = intersect / area_label
        overall = intersect.sum() / area_label.sum()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of all-NaN
        return {
            "mean_iou": np.nanmean(iou),
            "mean_accuracy": np.nanmean(acc),
            "overall_accuracy": overall,
            "per_category_iou": iou,
            "per_category_accuracy": acc,
        }


def assert_same_metrics(got: dict, want: dict) -> None:
    assert set(got) == KEYS
    for key in KEYS:
        # exact: both sides add the same integer counts and divide the same float64 values
        np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]), err_msg=key)


def random_maps(seed, n, num_labels, shape_range=(5, 40), ignore=IGNORE_INDEX, absent=(), oor=()):
    """Seeded (preds, refs): ~10% ignore pixels, classes in ``absent`` never used,
    ~5% predictions replaced by the values in ``oor`` (out of range)."""
    rng = np.random.default_rng(seed)
    classes = np.array([c for c in range(num_labels) if c not in absent])
    preds, refs = [], []
    for _ in range(n):
        h, w = rng.integers(*shape_range, size=2)
        ref = rng.choice(classes, size=(h, w))
        pred = np.where(rng.random((h, w)) < 0.6, ref, rng.choice(classes, size=(h, w)))
        ref[rng.random((h, w)) < 0.1] = ignore
        if oor:
            swap = rng.random((h, w)) < 0.05
            pred[swap] = rng.choice(oor, size=int(swap.sum()))
        preds.append(pred)
        refs.append(ref)
    return preds, refs


# --- hand-made cases -------------------------------------------------------------------------
# (pred, ref, num_labels, ignore_index, expected iou per class, expected accuracy per class, overall)
HAND_CASES = [
    pytest.param(
        [[0, 1], [1, 1]],
        [[0, 1], [0, 1]],
        2,
        255,
        [1 / 2, 2 / 3],
        [1 / 2, 1.0],
        3 / 4,
        id="two-classes-one-error",  # class 0: I=1, P=1, L=2; class 1: I=2, P=3, L=2
    ),
    pytest.param(
        [[0, 1], [1, 1]],
        [[0, 255], [255, 1]],
        2,
        255,
        [1.0, 1.0],
        [1.0, 1.0],
        1.0,
        id="ignored-pixels-drop-their-prediction",
    ),
    pytest.param(
        [[0, 0], [0, 0]],
        [[0, 0], [0, 0]],
        3,
        255,
        [1.0, NAN, NAN],
        [1.0, NAN, NAN],
        1.0,
        id="absent-classes-are-nan",
    ),
    pytest.param(
        [[2, 0], [0, 0]],
        [[0, 0], [0, 0]],
        3,
        255,
        [3 / 4, NAN, 0.0],
        [3 / 4, NAN, NAN],
        3 / 4,
        id="predicted-only-class-iou-0-accuracy-nan",
    ),
    pytest.param(
        [[7, 0], [-1, 1]],
        [[0, 0], [1, 1]],
        2,
        255,
        # out-of-range predictions count in no class but still in the reference's area
        [1 / 2, 1 / 2],
        [1 / 2, 1 / 2],
        2 / 4,
        id="out-of-range-predictions",
    ),
    pytest.param(
        [[1, 1], [0, 0]],
        [[5, 1], [0, 0]],
        2,
        255,
        # reference 5 is not ignored and is no class: its prediction 1 still counts for class 1
        [1.0, 1 / 2],
        [1.0, 1.0],
        1.0,
        id="out-of-range-reference-counts-in-prediction-area",
    ),
    pytest.param(
        [[0, 1], [1, 1]],
        [[0, 0], [0, 1]],
        2,
        0,
        # ignore_index can be a class id: reference 0 pixels vanish, class 0 is then never referenced
        [NAN, 1.0],
        [NAN, 1.0],
        1.0,
        id="ignore-index-inside-class-range",
    ),
    pytest.param(
        [[300, 299], [0, 299]],
        [[300, 299], [0, 0]],
        301,
        255,
        # values beyond a byte take the general path
        [1 / 2 if c in (0, 299) else (1.0 if c == 300 else NAN) for c in range(301)],
        [1 / 2 if c == 0 else (1.0 if c in (299, 300) else NAN) for c in range(301)],
        3 / 4,
        id="labels-beyond-255",
    ),
]


@pytest.mark.parametrize(
    ("pred", "ref", "num_labels", "ignore", "iou", "acc", "overall"), HAND_CASES
)
def test_hand_cases(pred, ref, num_labels, ignore, iou, acc, overall):
    got = mean_iou([np.array(pred)], [np.array(ref)], num_labels, ignore)
    np.testing.assert_allclose(got["per_category_iou"], iou, rtol=0, atol=1e-15)
    np.testing.assert_allclose(got["per_category_accuracy"], acc, rtol=0, atol=1e-15)
    assert got["overall_accuracy"] == pytest.approx(overall)
    assert got["mean_iou"] == pytest.approx(np.nanmean(iou))
    assert got["mean_accuracy"] == pytest.approx(np.nanmean(acc))
    assert_same_metrics(got, reference_mean_iou([pred], [ref], num_labels, ignore))


def test_evaluate_docstring_example():
    """The example printed in evaluate's mean_iou docstring (10 labels, ignore 255)."""
    preds = [
        np.array([[1, 2], [3, 4], [5, 255]]),
        np.array([[2, 7], [9, 2], [3, 6]]),
        np.array([[2, 2, 3], [8, 2, 4], [3, 255, 2]]),
    ]
    refs = [
        np.array([[0, 3], [5, 4], [6, 255]]),
        np.array([[1, 7], [9, 2], [3, 6]]),
        np.array([[1, 2, 2], [8, 2, 1], [3, 255, 1]]),
    ]
    got = mean_iou(preds, refs, num_labels=10, ignore_index=255)
    assert got["mean_iou"] == pytest.approx(0.4775)
    assert got["mean_accuracy"] == pytest.approx(0.5916666666666666)
    assert got["overall_accuracy"] == pytest.approx(10 / 19)
    np.testing.assert_allclose(got["per_category_iou"], [0, 0, 0.375, 0.4, 0.5, 0, 0.5, 1, 1, 1])


# --- parity with the reference on seeded random maps ---------------------------------------
PARITY_CASES = [
    # (seed, num_labels, ignore_index, absent classes, out-of-range prediction values, pred dtype)
    pytest.param(0, 5, 255, (), (), np.int64, id="plain"),
    pytest.param(1, 12, 255, (3, 7), (), np.uint8, id="absent-classes-uint8"),
    pytest.param(2, 12, 255, (3,), (12, 200, 255), np.int64, id="oor-predictions-incl-255"),
    pytest.param(3, 11, 11, (), (11, 40), np.int32, id="camvid-void-11"),
    pytest.param(
        4, 150, 255, tuple(range(100, 150)), (150, 999, -3), np.int64, id="ade-150-general"
    ),
    pytest.param(5, 4, 0, (), (9,), np.int16, id="ignore-0"),
    pytest.param(6, 1, 255, (), (1,), np.int64, id="single-class"),
    pytest.param(7, 300, 255, (), (300, 70000), np.int64, id="beyond-a-byte"),
    pytest.param(8, 300, 255, (), (300, 65535), np.uint16, id="uint16-like-16-bit-pngs"),
]


@pytest.mark.parametrize(("seed", "num_labels", "ignore", "absent", "oor", "dtype"), PARITY_CASES)
def test_parity_with_evaluate_algorithm(seed, num_labels, ignore, absent, oor, dtype):
    preds, refs = random_maps(seed, 6, num_labels, ignore=ignore, absent=absent, oor=oor)
    preds = [p.astype(dtype) for p in preds]
    want = reference_mean_iou(preds, refs, num_labels, ignore)
    assert_same_metrics(mean_iou(preds, refs, num_labels, ignore), want)
    # the same maps as torch tensors, and streamed one by one
    assert_same_metrics(
        mean_iou(
            [torch.from_numpy(p) for p in preds],
            [torch.from_numpy(r) for r in refs],
            num_labels,
            ignore,
        ),
        want,
    )


REDUCE_CASES = [
    # (reduce_labels, label_map, ref dtype)
    pytest.param(True, None, np.uint8, id="reduce-uint8"),
    pytest.param(True, None, np.int64, id="reduce-int64"),
    pytest.param(False, {3: 0, 0: 255}, np.uint8, id="label-map"),
    pytest.param(True, {1: 2, 2: 1}, np.int64, id="label-map-then-reduce"),
]


@pytest.mark.parametrize(("reduce", "label_map", "ref_dtype"), REDUCE_CASES)
def test_parity_reduce_labels_and_label_map(reduce, label_map, ref_dtype):
    num_labels = 8
    # raw references in 0..num_labels (0 = background when reduced), some raw 255
    preds, refs = random_maps(11, 5, num_labels + 1, ignore=255, oor=(8, 30))
    refs = [r.astype(ref_dtype) for r in refs]
    want = reference_mean_iou(preds, refs, num_labels, 255, label_map, reduce)
    got = mean_iou(preds, refs, num_labels, 255, label_map=label_map, reduce_labels=reduce)
    assert_same_metrics(got, want)


def test_reduce_labels_is_not_applied_to_predictions():
    # raw reference 1 is class 0 after reduction; the prediction 0 is already class 0
    got = mean_iou([np.array([[0, 1]])], [np.array([[1, 2]])], 2, 255, reduce_labels=True)
    np.testing.assert_array_equal(got["per_category_iou"], [1.0, 1.0])


def test_nan_to_num():
    got = mean_iou([np.array([[0]])], [np.array([[0]])], 3, 255, nan_to_num=-1)
    np.testing.assert_array_equal(got["per_category_iou"], [1.0, -1, -1])
    assert got["mean_iou"] == 1.0


# --- torchmetrics -------------------------------------------------------------------------
# Where the semantics differ (not exercised here): torchmetrics assumes predictions in
# 0..N-1 (no out-of-range class); it reports 0 (zero_division) instead of NaN for an absent
# class; with ignore_index inside 0..N-1 it also drops that class from the macro mean,
# while evaluate keeps it (IoU 0 if predicted). So: in-range predictions, ignore >= N,
# and per-class values compared only where they are defined.
@pytest.mark.parametrize(
    ("seed", "num_labels", "absent"),
    [(0, 6, ()), (1, 19, (2, 5, 11)), (2, 150, tuple(range(0, 150, 3)))],
)
def test_parity_with_torchmetrics(seed, num_labels, absent):
    preds, refs = random_maps(seed, 4, num_labels, shape_range=(16, 17), absent=absent)
    cm = ConfusionMatrix(num_labels)
    tm = MulticlassJaccardIndex(num_classes=num_labels, average="macro", ignore_index=IGNORE_INDEX)
    tm_none = MulticlassJaccardIndex(
        num_classes=num_labels, average="none", ignore_index=IGNORE_INDEX
    )
    for p, r in zip(preds, refs, strict=True):
        cm.update(p, r)
        tm.update(torch.from_numpy(p), torch.from_numpy(r))
        tm_none.update(torch.from_numpy(p), torch.from_numpy(r))
    got = cm.compute()
    assert got["mean_iou"] == pytest.approx(tm.compute().item(), rel=1e-6)
    defined = ~np.isnan(got["per_category_iou"])
    assert (~defined).sum() == len(absent)
    np.testing.assert_allclose(
        got["per_category_iou"][defined], tm_none.compute().numpy()[defined], rtol=1e-6
    )


# --- streaming, merging, shapes ---------------------------------------------------------------
def test_streaming_batch_merge_and_counts_agree():
    preds, refs = random_maps(21, 6, 7, shape_range=(12, 13), oor=(7, 300))
    whole = mean_iou(preds, refs, 7, 255)

    batch = ConfusionMatrix(7)
    batch.update(np.stack(preds), np.stack(refs))  # NxHxW in one call

    halves = [ConfusionMatrix(7), ConfusionMatrix(7)]
    for i, (p, r) in enumerate(zip(preds, refs, strict=True)):
        halves[i % 2].update(torch.from_numpy(p), r)  # mixed tensor / array
    # workers merge by summing counts (an all-reduce), as training does
    summed = ConfusionMatrix.from_counts(torch.from_numpy(halves[0].counts + halves[1].counts))
    for cm in (batch, summed):
        assert_same_metrics(cm.compute(), whole)
    np.testing.assert_array_equal(batch.counts, summed.counts)


def test_confusion_matrix_matches_pixel_loop():
    preds, refs = random_maps(5, 1, 6, oor=(6, -2))
    pred, ref = preds[0], refs[0]
    want = np.zeros((6, 6), dtype=np.int64)
    for p, r in zip(pred.ravel(), ref.ravel(), strict=True):
        if r != 255 and 0 <= p < 6 and 0 <= r < 6:
            want[r, p] += 1
    got = confusion_matrix(pred, ref, 6)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(
        confusion_matrix(torch.from_numpy(pred), torch.from_numpy(ref), 6), want
    )


def test_byte_and_general_paths_agree():
    preds, refs = random_maps(8, 3, 20, oor=(20, 255))
    small = ConfusionMatrix(20)
    wide = ConfusionMatrix(20)
    for p, r in zip(preds, refs, strict=True):
        # one out-of-range value: 232 fits a byte (byte-pair path), 1000 does not (general path)
        p_small = p.astype(np.uint8)
        p_small[0, 0] = 232
        p_wide = p.astype(np.int64)
        p_wide[0, 0] = 1000
        small.update(p_small, r.astype(np.uint8))
        wide.update(p_wide, r.astype(np.int64))
    np.testing.assert_array_equal(small.counts, wide.counts)


@pytest.mark.parametrize(
    "dtype", [np.bool_, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64]
)
def test_every_integer_dtype_counts_the_same(dtype):
    """Byte maps take a uint16 key, wider ones an intp key: same counts either way."""
    limit = 2 if dtype == np.bool_ else 7
    preds, refs = random_maps(11, 3, limit, ignore=limit - 1)  # every value fits every dtype
    want = ConfusionMatrix(7)
    got = ConfusionMatrix(7)
    for p, r in zip(preds, refs, strict=True):
        want.update(p.astype(np.int64), r.astype(np.int64))
        got.update(p.astype(dtype), r.astype(dtype if dtype != np.bool_ else np.uint8))
    assert want.counts.sum() > 0
    np.testing.assert_array_equal(got.counts, want.counts)


def test_empty():
    cm = ConfusionMatrix(3)
    assert cm.counts.sum() == 0
    cm.update(np.zeros((0, 4), np.int64), np.zeros((0, 4), np.int64))
    got = cm.compute()
    assert math.isnan(got["mean_iou"]) and math.isnan(got["overall_accuracy"])
    cm.update(np.array([[1]]), np.array([[1]]))
    assert cm.compute()["mean_iou"] == 1.0


BAD_INPUTS = [
    # (pred, ref, message fragment)
    pytest.param(
        np.zeros((2, 2), np.float32), np.zeros((2, 2), np.uint8), "argmax", id="float-pred"
    ),
    pytest.param(np.zeros((2, 2), np.int64), torch.zeros(2, 2), "argmax", id="float-ref"),
    pytest.param(np.zeros((2, 3), np.int64), np.zeros((3, 2), np.uint8), "resolution", id="shape"),
]


@pytest.mark.parametrize(("pred", "ref", "fragment"), BAD_INPUTS)
def test_bad_inputs_raise_one_line_errors(pred, ref, fragment):
    with pytest.raises(MetricInputError, match=fragment) as err:
        ConfusionMatrix(3).update(pred, ref)
    assert "\n" not in str(err.value)


def test_bad_construction():
    with pytest.raises(MetricInputError):
        ConfusionMatrix(0)
    with pytest.raises(MetricInputError, match="counts"):
        ConfusionMatrix.from_counts(np.zeros((3, 4)))
    with pytest.raises(MetricInputError, match="one per image"):
        mean_iou([np.zeros((1, 1), np.int64)], [], 2)


def test_torch_kernels_match_numpy_kernels():
    """The torch kernels run on accelerators only; check them on CPU tensors here."""
    from segdemo.metrics import _byte_pair_histogram, _general_counts

    preds, refs = random_maps(9, 2, 30, oor=(30, 255))
    p, r = preds[0].ravel(), refs[0].ravel()
    np.testing.assert_array_equal(
        _byte_pair_histogram(
            torch.from_numpy(p.astype(np.uint8)), torch.from_numpy(r.astype(np.uint8))
        ).numpy(),
        _byte_pair_histogram(p.astype(np.uint8), r.astype(np.uint8)),
    )
    p[:3] = [-5, 1000, 29]
    np.testing.assert_array_equal(
        _general_counts(torch.from_numpy(p), torch.from_numpy(r), 30, 255),
        _general_counts(p, r, 30, 255),
    )
