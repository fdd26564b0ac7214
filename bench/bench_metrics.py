"""Metric speed: segdemo.metrics.ConfusionMatrix vs evaluate's per-image np.histogram algorithm.

    nice python bench/bench_metrics.py            # 100 maps of 512x512, 150 classes
    nice python bench/bench_metrics.py --maps 20  # quicker

Both sides score the same seeded maps: references as read from PNGs (``uint8``,
blobs of 150 classes, 5% ignore 255) and predictions that agree with them on ~80%
of the pixels, with a few out-of-range ids. Predictions are timed twice: ``int64``
(an argmax output) and ``uint8`` (read back from ``predict``'s PNGs). The numbers
must be identical (asserted); the script prints CPU milliseconds per map and the
ratio (target: >= 20x). Single-threaded on both sides (NumPy only; no torch threads).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segdemo.metrics import ConfusionMatrix  # noqa: E402

NUM_LABELS = 150
IGNORE = 255


def make_maps(count: int, size: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Seeded (predictions int64, references uint8): blocky regions, noise, ignore, out-of-range."""
    rng = np.random.default_rng(seed)
    preds, refs = [], []
    for _ in range(count):
        cells = rng.integers(8, 33)
        coarse = rng.integers(0, NUM_LABELS, (cells, cells))
        ys = np.arange(size) * cells // size
        ref = coarse[ys[:, None], ys[None, :]].astype(np.uint8)
        pred = ref.astype(np.int64)
        wrong = rng.random((size, size)) < 0.2
        pred[wrong] = rng.integers(0, NUM_LABELS, int(wrong.sum()))
        pred[rng.random((size, size)) < 0.001] = NUM_LABELS + 5  # out of range: counts in no class
        ref[rng.random((size, size)) < 0.05] = IGNORE
        preds.append(pred)
        refs.append(ref)
    return preds, refs


def histogram_mean_iou(preds, refs, num_labels: int, ignore_index: int) -> dict:
    """evaluate's ``mean_iou`` algorithm (metrics/mean_iou/mean_iou.py, ``intersect_and_union``
    and ``total_intersect_and_union``, label_map/reduce_labels off), line for line: per image,
    mask the ignored pixels, then three np.histogram (intersection, prediction, label)."""
    total_area_intersect = np.zeros((num_labels,), dtype=np.float64)
    total_area_union = np.zeros((num_labels,), dtype=np.float64)
    total_area_pred_label = np.zeros((num_labels,), dtype=np.float64)
    total_area_label = np.zeros((num_labels,), dtype=np.float64)
    for pred_label, label in zip(preds, refs, strict=True):
        pred_label = np.array(pred_label)
        label = np.array(label)
        mask = label != ignore_index
        mask = np.not_equal(label, ignore_index)
        pred_label = pred_label[mask]
        label = np.array(label)[mask]
        intersect = pred_label[pred_label == label]
        hist = dict(bins=num_labels, range=(0, num_labels - 1))
        area_intersect = np.histogram(intersect, **hist)[0]
        area_pred_label = np.histogram(pred_label, **hist)[0]
        area_label = np.histogram(label, **hist)[0]
        area_union = area_pred_label + area_label - area_intersect
        total_area_intersect += area_intersect
        total_area_union += area_union
        total_area_pred_label += area_pred_label
        total_area_label += area_label
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = total_area_intersect / total_area_union
        acc = total_area_intersect / total_area_label
        return {
            "mean_iou": float(np.nanmean(iou)),
            "mean_accuracy": float(np.nanmean(acc)),
            "overall_accuracy": float(total_area_intersect.sum() / total_area_label.sum()),
            "per_category_iou": iou,
            "per_category_accuracy": acc,
        }


def confusion_mean_iou(preds, refs, num_labels: int, ignore_index: int) -> dict:
    matrix = ConfusionMatrix(num_labels, ignore_index)
    for pred, ref in zip(preds, refs, strict=True):
        matrix.update(pred, ref)
    return matrix.compute()


def best_times(fns, *args, repeat: int) -> tuple[list[float], list[dict]]:
    """Best CPU time of each function over ``repeat`` rounds, alternating within a round.

    CPU time of this (single-threaded) process, not wall time: on a shared machine
    wall time also counts the time spent waiting for a core. Alternating the sides
    exposes both to the same background load.
    """
    best, results = [float("inf")] * len(fns), [None] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            start = time.process_time()
            results[i] = fn(*args)
            best[i] = min(best[i], time.process_time() - start)
    return best, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--maps", type=int, default=100)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=5, help="best of N runs per side")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    preds, refs = make_maps(args.maps, args.size, args.seed)
    print(
        f"{args.maps} maps of {args.size}x{args.size}, {NUM_LABELS} classes, CPU time, best of {args.repeat}"
    )
    for dtype in (np.int64, np.uint8):
        typed = [p.astype(dtype) for p in preds]
        (t_hist, t_ours), (want, got) = best_times(
            [histogram_mean_iou, confusion_mean_iou],
            typed,
            refs,
            NUM_LABELS,
            IGNORE,
            repeat=args.repeat,
        )
        for key in want:
            np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]), err_msg=key)
        per_map = 1000 / args.maps
        print(
            f"pred {np.dtype(dtype).name:>5}: np.histogram {t_hist * per_map:7.2f} ms/map   "
            f"ConfusionMatrix {t_ours * per_map:6.2f} ms/map   ratio {t_hist / t_ours:5.1f}x   "
            f"(mIoU {got['mean_iou']:.6f}, identical)"
        )


if __name__ == "__main__":
    main()
