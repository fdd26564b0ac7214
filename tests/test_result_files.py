"""segdemo.result_files: one writer for NAME_labels.png / NAME_segments.json / overlay,
and the app and the CLI writing the same bytes for the same input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from segdemo import models, result_files, service
from segdemo.__main__ import main
from segdemo.result import Segment, SegmentationResult, Task, region_stats
from tests.builders import build_tiny

ID2LABEL = {0: "sky", 1: "road", 2: "car", 3: "person"}


def _instances(label_map: np.ndarray, labels: dict[int, int], task=Task.INSTANCE):
    """A result whose segment ``i`` has class ``labels[i]``, with areas and boxes from the map."""
    label_map = np.asarray(label_map, np.int32)
    segments = [
        Segment(i, ID2LABEL[labels[i]], labels[i], 0.75, area, bbox)
        for i, area, bbox in region_stats(label_map)
        if i
    ]
    return SegmentationResult(task, label_map, segments, ID2LABEL)


def _three_cars(height: int, width: int) -> SegmentationResult:
    label_map = np.zeros((height, width), np.int32)
    label_map[2:10, 3:12] = 1
    label_map[12:20, 5:9] = 2
    label_map[20:28, 30:50] = 3
    return _instances(label_map, {1: 2, 2: 2, 3: 3})


@pytest.mark.parametrize(
    "top, largest, mode",
    [
        (0, None, "L"),  # all background
        (255, None, "L"),  # the largest id that fits 8 bits
        (256, None, "I;16"),
        (3, 299, "I;16"),  # a 300-class semantic model: its maps are 16-bit whatever they hold
        (65535, None, "I;16"),
    ],
)
def test_label_map_image_bit_depth_and_round_trip(tmp_path, top, largest, mode):
    label_map = np.array([[0, top], [top // 2, 1]], np.int32)
    path = result_files.save_label_map(label_map, tmp_path / "m.png", largest)
    with Image.open(path) as saved:
        assert saved.mode == mode
        np.testing.assert_array_equal(np.asarray(saved), label_map)


def test_ids_beyond_16_bits_are_refused_in_one_line():
    with pytest.raises(result_files.LabelMapError, match="65536"):
        result_files.label_map_image(np.array([[65536]], np.int32))


@pytest.mark.parametrize(
    "result, largest",
    [
        # semantic: the model's class ids decide, not the pixels present
        (
            SegmentationResult(Task.SEMANTIC, np.zeros((2, 2), np.int32), [], {0: "a", 299: "z"}),
            299,
        ),
        # instance/panoptic: the segment ids
        (_three_cars(30, 60), 3),
        (SegmentationResult(Task.PANOPTIC, np.zeros((2, 2), np.int32), [], ID2LABEL), 0),
    ],
)
def test_largest_id(result, largest):
    assert result_files.largest_id(result) == largest


def test_write_result_files(tmp_path):
    result = _three_cars(30, 60)
    overlay = np.zeros((30, 80, 3), np.uint8)
    files = result_files.write_result_files(
        tmp_path, "photo", result, model_id="local/m", image_name="dir/photo.jpg", overlay=overlay
    )
    assert [p.name for p in (files.labels, files.segments, files.overlay)] == [
        "photo_labels.png",
        "photo_segments.json",
        "photo_overlay.png",
    ]
    summary = json.loads(files.segments.read_text(encoding="utf-8"))
    assert summary["image"] == "photo.jpg" and summary["model"] == "local/m"  # no folders
    assert [s["id"] for s in summary["segments"]] == [1, 2, 3]
    assert Image.open(files.labels).mode == "L"


@pytest.mark.parametrize("name", ["../up", "a/b", "", ".."])
def test_output_names_cannot_leave_the_folder(tmp_path, name):
    with pytest.raises(ValueError, match="plain file name"):
        result_files.write_result_files(tmp_path, name, _three_cars(30, 60), model_id="m")


# --------------------------------------------------------------------------- app == CLI


@pytest.fixture()
def world(tmp_path, monkeypatch):
    source = build_tiny("mask2former", tmp_path / "src" / "m2f", id2label=ID2LABEL)
    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(source, checkpoints / "m2f")
    monkeypatch.setenv("SEGDEMO_CHECKPOINTS", str(checkpoints))
    monkeypatch.delenv("SEGDEMO_ALLOW_ANY_MODEL", raising=False)
    photo = tmp_path / "street.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (30, 60, 3), dtype=np.uint8)).save(photo)
    models.clear_cache()
    yield tmp_path, photo
    models.clear_cache()


def _app_and_cli_files(tmp_path, photo, task: str, cli_args=()):
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    output = service.run_task(str(photo), "local/m2f", task, service.Options(), app_dir)
    cli_out = tmp_path / "cli"
    args = ["predict", str(photo), "--model", "local/m2f", "--task", task, "--out", str(cli_out)]
    assert main([*args, *cli_args]) == 0
    return output, cli_out / "street_labels.png", cli_out / "street_segments.json"


def test_app_and_cli_write_identical_files_for_a_three_instance_result(world, monkeypatch):
    """The README promises one format: the same result gives the same bytes from both."""
    import segdemo.segment

    tmp_path, photo = world
    calls = []

    def three_cars(loaded, image, task, **kwargs):
        calls.append(kwargs)
        return _three_cars(image.height, image.width)

    monkeypatch.setattr(segdemo.segment, "segment", three_cars)  # the CLI imports it per run
    monkeypatch.setattr(service, "segment", three_cars)
    output, labels, segments = _app_and_cli_files(tmp_path, photo, "instance")
    assert labels.read_bytes() == output.label_map_png.read_bytes()
    assert segments.read_bytes() == output.segments_json.read_bytes()
    assert Image.open(labels).mode == "L"  # 3 ids: 8-bit from both
    assert len(json.loads(segments.read_text())["segments"]) == 3
    # and both ran with the same (default) thresholds
    thresholds = [{k: v for k, v in c.items() if "threshold" in k} for c in calls]
    assert thresholds[0] == thresholds[1]


@pytest.mark.parametrize("task", ["semantic", "panoptic"])
def test_app_and_cli_agree_through_the_real_model(world, task):
    tmp_path, photo = world
    output, labels, segments = _app_and_cli_files(tmp_path, photo, task)
    assert labels.read_bytes() == output.label_map_png.read_bytes()
    assert segments.read_bytes() == output.segments_json.read_bytes()
