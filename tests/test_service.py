"""segdemo.service: the gradio-free request handlers behind app.py.

Tiny random-init checkpoints (tests/builders.py) stand in for real models, so the
tests check structure (shapes, dtypes, names, colours, files), not segmentation quality.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segdemo import result_files, service
from segdemo.images import ImageError, load_image
from segdemo.models import ModelLoadError, UnsupportedTaskError, load_model
from segdemo.registry import ModelNotAllowedError
from segdemo.result import Segment, SegmentationResult, Task
from segdemo.segment import segment
from tests.builders import DEFAULT_ID2LABEL, build_tiny

SEMANTIC_ID = "local/tiny-segformer"
UNIVERSAL_ID = "local/tiny-mask2former"
BROKEN_ID = "local/tiny-broken"
NAMES = set(DEFAULT_ID2LABEL.values())
LOW = service.Options(threshold=0.0, mask_threshold=0.0, overlap_mask_area_threshold=0.0, alpha=0.7)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A checkpoints folder with a semantic, a universal and a broken model, made current."""
    root = tmp_path_factory.mktemp("checkpoints")
    build_tiny("segformer", root / "tiny-segformer")
    build_tiny("mask2former", root / "tiny-mask2former")
    broken = build_tiny("segformer", root / "tiny-broken")
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEGDEMO_CHECKPOINTS", str(root))
        mp.delenv("SEGDEMO_ALLOW_ANY_MODEL", raising=False)
        yield root


@pytest.fixture
def photo() -> Image.Image:
    """96x64 RGB: a smooth gradient with a block, deterministic."""
    y, x = np.mgrid[0:64, 0:96]
    rgb = np.stack([x * 2, y * 3, (x + y) % 256], axis=-1).astype(np.uint8)
    rgb[20:40, 30:60] = (250, 30, 30)
    return Image.fromarray(rgb)


def _check_output(
    output: service.TaskOutput, task: Task, size: tuple[int, int], alpha: float = 0.5
) -> None:
    """Everything a task tab shows is consistent with the full-resolution result."""
    width, height = size
    result = output.result
    assert output.task is task
    assert result.label_map.shape == (height, width)
    assert output.image.shape == (height, width, 3) and output.image.dtype == np.uint8
    assert output.overlay.dtype == np.uint8 and output.overlay.shape[0] == height
    assert output.overlay.shape[1] >= width  # the legend strip is appended on the right
    names = [name for _, name in output.annotations]
    assert len(names) == len(set(names)) == sum(s.area > 0 for s in result.segments)
    assert set(output.color_map) == set(names)
    assert all(re.fullmatch(r"#[0-9a-f]{6}", c) for c in output.color_map.values())
    for mask, name in output.annotations:
        assert mask.shape == (height, width) and mask.dtype == np.float32
        # the opacity inside, clear outside
        assert set(np.unique(mask)) <= {0.0, np.float32(alpha)} and mask.max() == np.float32(alpha)
        assert re.sub(r" \d+$", "", name) in NAMES
    assert [row[0] for row in output.table] == names  # table and legend list the same regions
    areas = [row[2] for row in output.table]
    assert areas == sorted(areas, reverse=True)
    if task is Task.SEMANTIC:
        assert sum(areas) == pytest.approx(100.0, abs=0.05 * len(areas))
        assert all(row[1] is None for row in output.table)
    else:
        covered = 100.0 * np.count_nonzero(result.label_map) / result.label_map.size  # 0 = none
        assert sum(areas) == pytest.approx(covered, abs=0.05 * max(1, len(areas)))
        assert all(0.0 <= row[1] <= 1.0 for row in output.table)
    saved = np.asarray(Image.open(output.label_map_png))
    np.testing.assert_array_equal(saved, result.label_map)
    summary = json.loads(output.segments_json.read_text())
    assert summary["task"] == task.value and summary["model"] == output.model_id
    assert [s["id"] for s in summary["segments"]] == [s.id for s in result.segments]


@pytest.mark.parametrize(
    "task, model_id, options",
    [
        (Task.SEMANTIC, SEMANTIC_ID, service.Options()),  # SegFormer: class per pixel
        (Task.SEMANTIC, UNIVERSAL_ID, service.Options()),  # universal model, semantic head
        # thresholds at 0 keep the random model's queries, so there are segments to check
        (Task.INSTANCE, UNIVERSAL_ID, LOW),
        (Task.PANOPTIC, UNIVERSAL_ID, LOW),
    ],
)
def test_run_task_outputs_agree(checkpoints, photo, tmp_path, task, model_id, options):
    output = service.run_task(photo, model_id, task, options, tmp_path)
    assert output.model_id == model_id
    assert output.result.segments, "the tiny model should produce at least one segment here"
    _check_output(output, task, photo.size, options.alpha)


@pytest.mark.parametrize(
    "task, model_id, options",
    [
        (Task.SEMANTIC, SEMANTIC_ID, service.Options()),
        (Task.INSTANCE, UNIVERSAL_ID, LOW),
        (Task.PANOPTIC, UNIVERSAL_ID, LOW),
    ],
)
def test_run_task_equals_segment_on_the_same_image_and_model(
    checkpoints, photo, tmp_path, task, model_id, options
):
    """What the app shows and downloads is ``segment()``'s result, not a variant of it:
    the label map, the saved PNG and the segments match a direct call on the same upload."""
    upload = tmp_path / "upload.png"
    photo.save(upload)
    output = service.run_task(str(upload), model_id, task, options, tmp_path)
    expected = segment(
        load_model(model_id), load_image(upload), task, **options.thresholds.as_kwargs()
    )
    # a comparison worth making: at least two classes / two non-empty segments
    if task is Task.SEMANTIC:
        assert len(np.unique(expected.label_map)) >= 2
    else:
        assert sum(s.area > 0 for s in expected.segments) >= 2
    np.testing.assert_array_equal(output.result.label_map, expected.label_map)
    assert output.result.segments == expected.segments
    with Image.open(output.label_map_png) as saved:
        np.testing.assert_array_equal(np.asarray(saved), expected.label_map)


def test_run_task_reads_uploaded_files_and_reports_progress(checkpoints, photo, tmp_path):
    upload = tmp_path / "upload.png"
    photo.save(upload)
    steps = []
    output = service.run_task(
        str(upload),
        SEMANTIC_ID,
        "semantic",
        service.Options(),
        tmp_path,
        lambda f, d: steps.append((f, d)),
    )
    _check_output(output, Task.SEMANTIC, photo.size)
    fractions = [f for f, _ in steps]
    assert fractions == sorted(fractions) and all(0 <= f <= 1 for f in fractions)
    assert any("Loading" in d for _, d in steps)


def test_large_image_is_shown_small_but_downloaded_full(checkpoints, tmp_path):
    wide = Image.fromarray(
        np.random.default_rng(0).integers(0, 255, (700, 2100, 3), dtype=np.uint8)
    )
    output = service.run_task(wide, SEMANTIC_ID, Task.SEMANTIC, service.Options(), tmp_path)
    scale = service.DISPLAY_MAX_SIDE / 2100
    assert output.image.shape[:2] == (round(700 * scale), service.DISPLAY_MAX_SIDE)
    assert all(m.shape == output.image.shape[:2] for m, _ in output.annotations)
    assert np.asarray(Image.open(output.label_map_png)).shape == (700, 2100)


@pytest.mark.parametrize(
    "image, model_id, task, error, words",
    [
        (None, SEMANTIC_ID, "semantic", service.RequestError, "no image"),
        (b"this is not an image", SEMANTIC_ID, "semantic", ImageError, "not an image"),
        (b"", SEMANTIC_ID, "semantic", ImageError, "empty"),
        ("PHOTO", None, "semantic", service.RequestError, "no model selected"),
        ("PHOTO", "facebook/some-other-model", "semantic", ModelNotAllowedError, "not offered"),
        ("PHOTO", "/etc", "semantic", ModelNotAllowedError, "not offered"),
        ("PHOTO", SEMANTIC_ID, "instance", UnsupportedTaskError, "instance"),
        ("PHOTO", BROKEN_ID, "semantic", ModelLoadError, BROKEN_ID),
        ("PHOTO", SEMANTIC_ID, "depth", service.RequestError, "unknown task"),
    ],
)
def test_bad_requests_raise_one_line_user_errors(
    checkpoints, photo, tmp_path, image, model_id, task, error, words
):
    image = photo if image == "PHOTO" else image
    with pytest.raises(error) as info:
        service.run_task(image, model_id, task, service.Options(), tmp_path)
    assert isinstance(info.value, service.USER_ERRORS)
    message = str(info.value)
    assert words in message and "\n" not in message
    # the service keeps serving: the next good request works
    service.run_task(photo, SEMANTIC_ID, "semantic", service.Options(), tmp_path)


@pytest.mark.parametrize(
    "field, value",
    [
        ("threshold", -0.1),  # below range
        ("mask_threshold", 1.5),  # above range
        ("alpha", "0.5"),  # strings are not numbers
        ("overlap_mask_area_threshold", None),  # missing value from an API caller
        ("tta", "rot90"),  # not a test-time augmentation of segdemo.tta
    ],
)
def test_options_out_of_range_are_refused(field, value):
    with pytest.raises(service.RequestError, match=field):
        service.Options(**{field: value})


def test_compare_notes_missing_and_broken_models(checkpoints, photo, tmp_path):
    outputs = service.run_compare(
        photo,
        {Task.SEMANTIC: BROKEN_ID, Task.INSTANCE: None, Task.PANOPTIC: UNIVERSAL_ID},
        LOW,
        tmp_path,
    )
    assert list(outputs) == [Task.SEMANTIC, Task.INSTANCE, Task.PANOPTIC]
    assert BROKEN_ID in outputs[Task.SEMANTIC]  # the load error, as a note
    assert "No instance model" in outputs[Task.INSTANCE]
    _check_output(outputs[Task.PANOPTIC], Task.PANOPTIC, photo.size, LOW.alpha)


def test_compare_with_a_bad_image_raises(checkpoints, tmp_path):
    with pytest.raises(ImageError):
        service.run_compare(
            b"GIF89a-garbage", {Task.SEMANTIC: SEMANTIC_ID}, service.Options(), tmp_path
        )


def test_model_choices_list_local_checkpoints_per_task(checkpoints):
    semantic = [model_id for _, model_id in service.model_choices("semantic")]
    instance = [model_id for _, model_id in service.model_choices("instance")]
    assert {SEMANTIC_ID, UNIVERSAL_ID} <= set(semantic)
    assert UNIVERSAL_ID in instance and SEMANTIC_ID not in instance


def _result(task: Task, segments: list[tuple[str, int]]) -> SegmentationResult:
    """A result with segments ``(label, area)`` numbered from id 1."""
    segments = [
        Segment(id=i + 1, label=name, label_id=0, score=0.9, area=area, bbox=(0, 0, 1, 1))
        for i, (name, area) in enumerate(segments)
    ]
    return SegmentationResult(task, np.zeros((2, 2), np.int32), segments, {})


@pytest.mark.parametrize(
    "segments, expected",
    [
        ([("sky", 5), ("road", 9)], ["sky", "road"]),  # distinct classes keep their names
        ([("car", 2), ("car", 7), ("road", 1)], ["car 2", "car 1", "road"]),  # 1 = largest
        ([("car", 3), ("person", 1), ("car", 3)], ["car 1", "person", "car 2"]),  # ties: id order
        ([], []),  # nothing found
    ],
)
def test_segment_names_are_unique_and_numbered_by_size(segments, expected):
    names = service._segment_names(_result(Task.INSTANCE, segments))
    assert list(names.values()) == expected


@pytest.mark.parametrize(
    "top, mode",
    [
        (0, "L"),  # all background
        (255, "L"),  # largest id that fits 8 bits
        (256, "I;16"),  # needs 16 bits
        (65535, "I;16"),
    ],
)
def test_label_map_png_round_trips(tmp_path, top, mode):
    label_map = np.array([[0, top], [top // 2, 1]], np.int32)
    path = tmp_path / "map.png"
    result_files.save_label_map(label_map, path)
    with Image.open(path) as saved:
        assert saved.mode == mode
        np.testing.assert_array_equal(np.asarray(saved), label_map)


def test_new_request_dir_prunes_only_old_folders(tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    long_ago = time.time() - 7200
    os.utime(old, (long_ago, long_ago))
    recent = service.new_request_dir(tmp_path)
    fresh = service.new_request_dir(tmp_path)
    assert not old.exists()
    assert recent.is_dir() and fresh.is_dir() and recent != fresh
    assert Path(recent).parent == tmp_path


def test_repeated_requests_reuse_the_loaded_model(checkpoints, photo, tmp_path, monkeypatch):
    from segdemo import models

    models.clear_cache()
    loads = []
    real_load = models._load
    monkeypatch.setattr(models, "_load", lambda spec: loads.append(spec.id) or real_load(spec))
    for _ in range(3):
        service.run_task(photo, SEMANTIC_ID, "semantic", service.Options(), tmp_path)
    assert loads == [SEMANTIC_ID]
