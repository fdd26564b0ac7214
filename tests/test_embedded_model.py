"""The shipped CamVid model (checkpoints/segdemo-camvid) segments a real road scene sensibly.

Known content, not a golden file: the committed example is a CamVid val photo whose ground
truth is committed beside the tests. Sky/building/tree fill its top rows and road/pavement
its bottom rows; the model must get those regions right and agree with the annotation on
most pixels. The thresholds sit well below what the shipped model measures (see its
README.md), so a retrained model that still works passes and a broken one does not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segdemo import load_image
from segdemo.labels import IGNORE_INDEX, to_train_ids
from segdemo.models import load_model
from segdemo.registry import discover_local
from segdemo.segment import segment

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "examples" / "camvid_0016E5_07959.jpg"
TRUTH = ROOT / "tests" / "data" / "camvid_0016E5_07959_labels.png"
MODEL_ID = "local/segdemo-camvid"


@pytest.fixture(scope="module")
def result(monkeypatch_module):
    monkeypatch_module.setenv("SEGDEMO_CHECKPOINTS", str(ROOT / "checkpoints"))
    assert MODEL_ID in {s.id for s in discover_local()}, "the embedded checkpoint is not discovered"
    return segment(load_model(MODEL_ID), load_image(PHOTO), "semantic")


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def class_ids(result, *names: str) -> list[int]:
    by_name = {v: k for k, v in result.id2label.items()}
    return [by_name[n] for n in names]


def share(region: np.ndarray, ids: list[int]) -> float:
    return float(np.isin(region, ids).mean())


def test_result_has_the_photo_size_and_camvid_classes(result):
    assert result.label_map.shape == (360, 480)
    assert set(result.id2label.values()) >= {"sky", "road", "building", "car"}


@pytest.mark.parametrize(
    ("rows", "classes", "minimum"),
    [
        # top sixth: the annotation has 31% sky, 40% building, 29% tree
        (slice(0, 60), ("sky", "building", "tree"), 0.85),
        # bottom sixth: 86% road, 14% pavement
        (slice(300, 360), ("road", "pavement"), 0.75),
        (slice(300, 360), ("road",), 0.6),
    ],
)
def test_regions_of_known_content(result, rows, classes, minimum):
    assert share(result.label_map[rows], class_ids(result, *classes)) >= minimum


def test_agrees_with_the_ground_truth_on_most_pixels(result):
    truth = to_train_ids(np.asarray(Image.open(TRUTH)), ignore_index=11)
    valid = truth != IGNORE_INDEX
    accuracy = float((result.label_map[valid] == truth[valid]).mean())
    assert accuracy >= 0.7
