"""bench/thing_recall_by_area.py: instances found per COCO area range, by PQ's matching.

The counting function is checked on hand-built maps whose answer is known (a match needs
IoU > 0.5; crowd is never an instance); the script end to end on a synthetic COCO panoptic
folder with a tiny random Mask2Former, where the instance counts per range must equal the
areas read independently from the ground-truth PNGs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from builders import build_tiny
from PIL import Image
from synthetic_panoptic import ID2LABEL, write_panoptic_folder

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.thing_recall_by_area import AREA_RANGES, found_by_area, main  # noqa: E402

ROAD, CAR = 0, 1


def _maps():
    """100x100: a 10x10 car (small), a 40x40 car (medium), a 10x10 crowd car, road elsewhere."""
    gt = np.full((100, 100), 3, np.int32)
    gt[0:10, 0:10] = 1  # 100 px
    gt[50:90, 50:90] = 2  # 1600 px
    gt[0:10, 80:90] = 4  # crowd
    gt_segments = {1: (CAR, False), 2: (CAR, False), 3: (ROAD, False), 4: (CAR, True)}
    pred = np.zeros((100, 100), np.int32)
    pred[50:90, 50:90] = 10  # the medium car exactly
    pred[0:4, 0:10] = 11  # 40% of the small car: IoU 0.4, no match
    return pred, {10: CAR, 11: CAR}, gt, gt_segments


def test_found_by_area_counts_matches_per_range():
    found = found_by_area(*_maps(), num_classes=2)
    assert set(found) == set(AREA_RANGES)
    assert found["small"][CAR].tolist() == [0, 1]  # the crowd car is no instance
    assert found["medium"][CAR].tolist() == [1, 1]
    assert found["large"][CAR].tolist() == [0, 0]
    # road: 10000 - 100 - 1600 - 100 = 8200 px, medium, not predicted
    assert found["medium"][ROAD].tolist() == [0, 1]


def test_a_half_covered_instance_is_not_found():
    pred, pred_segments, gt, gt_segments = _maps()
    pred[0:5, 0:10] = 11  # 50 of 100 px: IoU exactly 0.5 is not > 0.5
    assert found_by_area(pred, pred_segments, gt, gt_segments, 2)["small"][CAR].tolist() == [0, 1]
    pred[0:6, 0:10] = 11  # 60 px: IoU 0.6
    assert found_by_area(pred, pred_segments, gt, gt_segments, 2)["small"][CAR].tolist() == [1, 1]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_panoptic_folder(tmp_path_factory.mktemp("pan"), n_train=2, n_val=4)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny("mask2former", tmp_path_factory.mktemp("m2f") / "model", id2label=ID2LABEL)


def _instances_by_range(folder: Path) -> dict[str, dict[str, int]]:
    """Non-crowd thing segments of val per class and range, areas from the PNGs."""
    meta = json.loads((folder / "val" / "panoptic.json").read_text())
    names = {c["id"]: c["name"] for c in meta["categories"] if c["isthing"]}
    counts = {name: dict.fromkeys(AREA_RANGES, 0) for name in names.values()}
    for ann in meta["annotations"]:
        rgb = np.asarray(Image.open(folder / "val" / "panoptic" / ann["file_name"]), np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
        for seg in ann["segments_info"]:
            if seg["category_id"] in names and not seg.get("iscrowd"):
                area = int((ids == seg["id"]).sum())
                size = next(k for k, (lo, hi) in AREA_RANGES.items() if lo <= area < hi)
                counts[names[seg["category_id"]]][size] += 1
    return counts


@pytest.mark.parametrize("source", ["panoptic", "semantic-split"])
def test_script_counts_every_instance_once(folder, model, tmp_path, source, capsys):
    out = tmp_path / "recall.json"
    report = main(
        ["--model", str(model), "--source", source, "--data-dir", str(folder), "--out", str(out)]
    )
    assert json.loads(out.read_text()) == report
    assert report["images"] == 4 and report["source"] == source
    expected = _instances_by_range(folder)
    assert sum(sum(row.values()) for row in expected.values()) > 0
    assert {
        label: {size: cell["instances"] for size, cell in row.items()}
        for label, row in report["recall"].items()
    } == expected
    for row in report["recall"].values():
        assert all(0 <= cell["found"] <= cell["instances"] for cell in row.values())
    printed = capsys.readouterr().out
    assert "disc" in printed and "box" in printed
