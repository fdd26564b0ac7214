"""Baseline for the embedded panoptic model: a semantic model split into instances.

The semantic model's prediction of each val image (a Mask2Former's semantic output works
too) goes through the same rules that made
the panoptic ground truth (:func:`segdemo.convert.semantic_to_panoptic`: every stuff class
one segment, every 8-connected component of a thing class one instance, components under
``--min-area`` pixels void) and is scored against that ground truth by the project's PQ
(:mod:`segdemo.panoptic_quality`, panopticapi's rules).

    python -m segdemo convert semantic-to-panoptic --data-dir ../shared/datasets/camvid \\
        --things car,pedestrian,bicyclist --ignore-index 11 --min-area 64 --out /tmp/camvid-panoptic
    python bench/panoptic_baseline.py --model local/segdemo-camvid --data-dir /tmp/camvid-panoptic \\
        --out bench/results/panoptic_baseline.json

Prints PQ, SQ, RQ overall / things / stuff and per class; ``--out`` writes the JSON report.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from segdemo import coco, data  # noqa: E402
from segdemo.convert import semantic_to_panoptic  # noqa: E402
from segdemo.evaluate import parse_groups  # noqa: E402
from segdemo.models import load_model  # noqa: E402
from segdemo.panoptic_quality import panoptic_counts, pq_from_counts  # noqa: E402
from segdemo.segment import segment  # noqa: E402


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """``--data-dir``, ``--min-area``, ``--val-groups`` and ``--out``."""
    parser.add_argument("--data-dir", required=True, help="a COCO panoptic folder (val split)")
    parser.add_argument("--min-area", type=int, default=64, help="the converter's --min-area")
    parser.add_argument(
        "--val-groups",
        help="score these groups (comma list, e.g. 0001TP) of train and val pooled, as "
        "`segdemo evaluate --val-groups` does, instead of the val split",
    )
    parser.add_argument("--out", help="write the JSON report here")


def scored_splits(args: argparse.Namespace) -> tuple[coco.UniversalSplits, list[str] | None]:
    """The COCO panoptic folder with the images to score as ``val``, and the groups."""
    splits = coco.load_universal("panoptic", data_dir=args.data_dir)
    groups = parse_groups(args)
    if groups:
        splits = data.groups_as_val(splits, groups)
    return splits, groups


def load_for(model_id: str, splits: coco.UniversalSplits):
    """``model_id`` loaded (any checkpoint folder: an operator tool), with the data's classes."""
    loaded = load_model(model_id, allow_any=True)
    if loaded.id2label != splits.id2label:
        raise SystemExit(f"{model_id}: its classes are not the dataset's")
    return loaded


def semantic_split(
    loaded, image, thing_ids: Iterable[int], min_area: int
) -> tuple[np.ndarray, dict[int, int]]:
    """``loaded``'s semantic prediction of ``image`` as panoptic segments, by the converter's
    rules: ``(HxW segment ids at the image's size, 0 = none; {segment id: class id})``."""
    label_map = segment(loaded, image, "semantic").label_map
    pred_map, segments = semantic_to_panoptic(
        label_map, thing_ids, ignore_index=None, min_area=min_area
    )
    return pred_map, {s["id"]: s["category_id"] for s in segments}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        default="local/segdemo-camvid",
        help="a model with a semantic output: a semantic model, or an instance/panoptic "
        "Mask2Former (its semantic post-processing: how good its class masks are, whatever "
        "its instances)",
    )
    add_data_arguments(parser)
    args = parser.parse_args(argv)

    splits, groups = scored_splits(args)
    loaded = load_for(args.model, splits)
    num_classes = len(splits.id2label)
    counts = np.zeros((num_classes, 4), np.float64)
    for index in range(len(splits.val)):
        image, target = splits.val[index]
        pred_map, pred_segments = semantic_split(loaded, image, splits.thing_ids, args.min_area)
        gt_map, gt_segments = target.panoptic_map()
        counts += panoptic_counts(pred_map, pred_segments, gt_map, gt_segments, num_classes)
    report = {
        "model": args.model,
        "data": str(args.data_dir),
        "split": "val" if not groups else "train+val",
        "val_groups": groups,
        "images": len(splits.val),
        **pq_from_counts(counts, splits.id2label, sorted(splits.thing_ids)),
    }
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
