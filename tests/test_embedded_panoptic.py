"""The shipped CamVid panoptic model (checkpoints/segdemo-camvid-panoptic) on a real photo.

Known content, not a golden file: the committed example is a CamVid val frame whose
annotation (tests/data) has two cars (893 and 5134 px as 8-connected components), road in
its bottom rows and sky in its top rows. Through the Panoptic task, at the thresholds the
model recommends (what the app starts from), the model must find at least two separate car
instances and the road and sky regions where they are; through the Instance task it must
return scored car masks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segdemo import load_image
from segdemo.models import load_model
from segdemo.registry import EMBEDDED_PANOPTIC_MODEL_ID, get_spec
from segdemo.segment import segment
from segdemo.service import default_model

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "examples" / "camvid_0016E5_07959.jpg"


@pytest.fixture(scope="module")
def loaded():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SEGDEMO_CHECKPOINTS", str(ROOT / "checkpoints"))
        patch.delenv("SPACE_ID", raising=False)
        patch.delenv("SEGDEMO_PREFER_HUB", raising=False)
        spec = get_spec(EMBEDDED_PANOPTIC_MODEL_ID)
        assert default_model("panoptic").id == EMBEDDED_PANOPTIC_MODEL_ID
        assert default_model("instance").id == EMBEDDED_PANOPTIC_MODEL_ID
        yield load_model(EMBEDDED_PANOPTIC_MODEL_ID), spec.thresholds()


def _run(loaded, task):
    model, thresholds = loaded
    return segment(model, load_image(PHOTO), task, **thresholds.as_kwargs())


def test_panoptic_finds_two_cars_road_and_sky(loaded):
    result = _run(loaded, "panoptic")
    assert result.label_map.shape == (360, 480)
    cars = [s for s in result.segments if s.label == "car" and s.area > 0]
    assert len(cars) >= 2, [(s.label, s.area) for s in result.segments]
    assert all(s.is_thing for s in cars)
    by_label = {s.label: s for s in result.segments if s.area > 0}
    assert {"road", "sky"} <= set(by_label)
    assert by_label["road"].is_thing is False and by_label["sky"].is_thing is False
    # road fills the bottom rows, sky a good part of the top rows (annotation: 86% / 31%)
    ids = {s.id: s.label for s in result.segments}
    labels = np.vectorize(lambda v: ids.get(int(v), ""))(result.label_map[::4, ::4])
    assert (labels[-15:] == "road").mean() >= 0.5
    assert (labels[:15] == "sky").mean() >= 0.15
    # stuff classes are fused: one segment per stuff class
    stuff = [s.label for s in result.segments if s.is_thing is False and s.area > 0]
    assert len(stuff) == len(set(stuff))


def test_instance_gives_scored_car_masks(loaded):
    result = _run(loaded, "instance")
    cars = [s for s in result.segments if s.label == "car" and s.area > 0]
    assert cars, [(s.label, s.area, s.score) for s in result.segments]
    assert all(0.0 < s.score <= 1.0 for s in cars)
    assert {s.label for s in result.segments} <= {"car", "pedestrian", "bicyclist"}
