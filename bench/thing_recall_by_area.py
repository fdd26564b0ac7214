"""Which thing instances a model finds, by size: recall per class and COCO area range.

An exploration of where things PQ is lost. Each ground-truth thing instance (not crowd) of
the scored images counts as found when a predicted segment of its class matches it by PQ's
rule (IoU > 0.5, :func:`segdemo.panoptic_quality.panoptic_counts`: the same matching as
``segdemo evaluate --task panoptic``). Instances are binned by their pixel area at the
annotation's resolution with COCO's ranges: small < 32², medium 32²-96², large >= 96².

Predictions come from either

- ``--source panoptic``: the model's panoptic output at its recommended thresholds, the path
  ``python -m segdemo evaluate --task panoptic`` scores; or
- ``--source semantic-split``: the model's semantic output split by the converter's rules,
  the baseline of ``bench/panoptic_baseline.py``.

    python bench/thing_recall_by_area.py --model /tmp/camvid-panoptic-heldout-1800/model \\
        --data-dir /tmp/camvid-panoptic --val-groups 0001TP
    python bench/thing_recall_by_area.py --model /tmp/sweep/J-native-ft --source semantic-split \\
        --data-dir /tmp/camvid-panoptic --val-groups 0001TP

Prints one line per thing class; ``--out`` writes the JSON report
(``{"recall": {class: {range: {"found", "instances"}}}, ...}``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.panoptic_baseline import (  # noqa: E402
    add_data_arguments,
    load_for,
    scored_splits,
    semantic_split,
)
from segdemo.panoptic_quality import FN, TP, panoptic_counts  # noqa: E402

AREA_RANGES = {"small": (0, 32**2), "medium": (32**2, 96**2), "large": (96**2, np.inf)}
"""COCO's object size ranges in pixels, ``[low, high)``."""


def found_by_area(
    pred_map: np.ndarray,
    pred_segments: Mapping[int, int],
    gt_map: np.ndarray,
    gt_segments: Mapping[int, tuple[int, bool]],
    num_classes: int,
) -> dict[str, np.ndarray]:
    """Per COCO area range, ``(num_classes, 2)`` int64 ``[found, instances]`` of one image.

    Args are :func:`segdemo.panoptic_quality.panoptic_counts`'s. A ground-truth segment
    outside the range is passed as crowd, which PQ never matches nor counts as missed, so
    ``found`` (TP) and ``found + missed`` (TP + FN) count only the range's segments, matched
    by the unchanged rule. Area = the segment's pixels in ``gt_map``.
    """
    ids, areas = np.unique(gt_map, return_counts=True)
    area_of = dict(zip(ids.tolist(), areas.tolist(), strict=True))
    result = {}
    for name, (low, high) in AREA_RANGES.items():
        in_range = {
            seg_id: (class_id, crowd or not low <= area_of.get(seg_id, 0) < high)
            for seg_id, (class_id, crowd) in gt_segments.items()
        }
        counts = panoptic_counts(pred_map, pred_segments, gt_map, in_range, num_classes)
        result[name] = np.stack([counts[:, TP], counts[:, TP] + counts[:, FN]], 1).astype(np.int64)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="checkpoint folder or model id")
    parser.add_argument(
        "--source",
        choices=("panoptic", "semantic-split"),
        default="panoptic",
        help="the model's panoptic output, or its semantic output split by the converter",
    )
    add_data_arguments(parser)
    args = parser.parse_args(argv)

    splits, groups = scored_splits(args)
    predict = _predictor(args, splits)
    num_classes = len(splits.id2label)
    totals = {name: np.zeros((num_classes, 2), np.int64) for name in AREA_RANGES}
    for index in range(len(splits.val)):
        image, target = splits.val[index]
        gt_map, gt_segments = target.panoptic_map()
        pred_map, pred_segments = predict(image, gt_map.shape)
        for name, counts in found_by_area(
            pred_map, pred_segments, gt_map, gt_segments, num_classes
        ).items():
            totals[name] += counts
    recall = {
        splits.id2label[c]: {
            name: {"found": int(totals[name][c, 0]), "instances": int(totals[name][c, 1])}
            for name in AREA_RANGES
        }
        for c in sorted(splits.thing_ids)
    }
    report = {
        "model": args.model,
        "source": args.source,
        "data": str(args.data_dir),
        "val_groups": groups,
        "images": len(splits.val),
        "area_ranges": {
            k: [lo, None if hi == np.inf else hi] for k, (lo, hi) in AREA_RANGES.items()
        },
        "recall": recall,
    }
    for label, row in recall.items():
        cells = [f"{name} {r['found']}/{r['instances']}" for name, r in row.items()]
        print(f"{label:12s} " + "  ".join(cells))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
    return report


def _predictor(args: argparse.Namespace, splits):
    """``predict(image, (h, w)) -> (segment-id map, {segment id: class id})``."""
    if args.source == "panoptic":
        from segdemo.evaluate_universal import model_predictor

        flags = dict.fromkeys(("threshold", "mask_threshold", "overlap_mask_area_threshold"))
        run, _ = model_predictor(args.model, "panoptic", splits, flags=flags)

        def predict(image, size):
            label_map, segments = run("image", image, size)
            return label_map, {int(s): int(c) for s, c, _ in segments}

        return predict

    loaded = load_for(args.model, splits)
    return lambda image, size: semantic_split(loaded, image, splits.thing_ids, args.min_area)


if __name__ == "__main__":
    main()
