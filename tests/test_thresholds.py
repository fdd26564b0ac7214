"""Thresholds defined once, a model's recommended thresholds (segdemo.json), and the
models preselected offline (the embedded CamVid models)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from segdemo import models, registry, service
from segdemo.__main__ import main
from segdemo.result import Task
from segdemo.thresholds import DEFAULT_THRESHOLDS, ThresholdError, Thresholds
from tests.builders import build_tiny

CAMVID = dict(enumerate(registry.CAMVID_LABELS))
SEMANTIC_ID, PANOPTIC_ID = registry.EMBEDDED_MODEL_ID, registry.EMBEDDED_PANOPTIC_MODEL_ID
RECOMMENDED = {"threshold": 0.5, "overlap_mask_area_threshold": 0.8}  # a subset


@pytest.mark.parametrize(
    "values, expected",
    [
        ({}, (0.9, 0.5, 0.5)),  # the pipeline's defaults
        ({"threshold": 0.5}, (0.5, 0.5, 0.5)),  # any subset replaces only itself
        (RECOMMENDED, (0.5, 0.5, 0.8)),
        ({"mask_threshold": 0, "threshold": 1}, (1.0, 0.0, 0.5)),  # ints are numbers
    ],
)
def test_thresholds_from_a_mapping(values, expected):
    t = Thresholds.from_mapping(values)
    assert (t.threshold, t.mask_threshold, t.overlap_mask_area_threshold) == expected


@pytest.mark.parametrize(
    "values, words",
    [
        ({"threshold": 1.5}, "between 0 and 1"),
        ({"threshold": "high"}, "must be a number"),
        ({"threshold": True}, "must be a number"),  # JSON true is no threshold
        ({"score": 0.5}, "unknown threshold score"),
        ([0.5], "must be an object"),
    ],
)
def test_bad_thresholds_are_refused_in_one_line(values, words):
    with pytest.raises(ThresholdError, match=words) as info:
        Thresholds.from_mapping(values)
    assert "\n" not in str(info.value)


def test_every_front_end_starts_from_the_one_constant():
    import inspect

    from segdemo.segment import segment

    defaults = {
        name: p.default
        for name, p in inspect.signature(segment).parameters.items()
        if "threshold" in name
    }
    assert defaults == DEFAULT_THRESHOLDS.as_kwargs()
    assert service.Options().thresholds == DEFAULT_THRESHOLDS


# --------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("thresholds-src")
    return {
        "camvid": build_tiny("segformer", root / "camvid", id2label=CAMVID),
        "panoptic": build_tiny("mask2former", root / "panoptic", id2label=CAMVID),
    }


@pytest.fixture()
def checkpoints(tmp_path, monkeypatch, sources):
    """SEGDEMO_CHECKPOINTS with the two embedded models; the panoptic one recommends thresholds."""
    root = tmp_path / "checkpoints"
    shutil.copytree(sources["camvid"], root / "segdemo-camvid")
    shutil.copytree(sources["panoptic"], root / "segdemo-camvid-panoptic")
    spec_file = {"palette": "camvid", "thresholds": RECOMMENDED}
    (root / "segdemo-camvid-panoptic" / "segdemo.json").write_text(json.dumps(spec_file))
    monkeypatch.setenv("SEGDEMO_CHECKPOINTS", str(root))
    for name in ("SPACE_ID", "SEGDEMO_PREFER_HUB", "SEGDEMO_ALLOW_ANY_MODEL"):
        monkeypatch.delenv(name, raising=False)
    models.clear_cache()
    yield root
    models.clear_cache()


def test_a_spec_carries_the_recommended_thresholds(checkpoints):
    spec = registry.get_spec(PANOPTIC_ID)
    assert spec.recommended_thresholds == Thresholds(0.5, 0.5, 0.8)
    assert spec.thresholds() == Thresholds(0.5, 0.5, 0.8)
    plain = registry.get_spec(SEMANTIC_ID)
    assert plain.recommended_thresholds is None and plain.thresholds() == DEFAULT_THRESHOLDS


def test_unusable_recommended_thresholds_are_ignored_with_a_warning(checkpoints, caplog):
    spec_file = checkpoints / "segdemo-camvid-panoptic" / "segdemo.json"
    spec_file.write_text(json.dumps({"thresholds": {"threshold": 7}}))
    with caplog.at_level("WARNING", logger="segdemo.registry"):
        spec = registry.get_spec(PANOPTIC_ID)
    assert spec.recommended_thresholds is None
    assert any("ignoring thresholds" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "model_id, expected, recommended",
    [
        (PANOPTIC_ID, Thresholds(0.5, 0.5, 0.8), True),
        (SEMANTIC_ID, DEFAULT_THRESHOLDS, False),
        ("", DEFAULT_THRESHOLDS, False),  # nothing selected
        ("someone/typed-this", DEFAULT_THRESHOLDS, False),  # not offered: the request says so
    ],
)
def test_the_ui_starts_from_the_recommendation(checkpoints, model_id, expected, recommended):
    import app

    assert service.start_thresholds(model_id) == (expected, recommended)
    *values, note = app.threshold_settings(model_id)
    assert values == [
        expected.threshold,
        expected.mask_threshold,
        expected.overlap_mask_area_threshold,
    ]
    assert (note == app.RECOMMENDED_NOTE) is recommended and (note == "") is not recommended


def _capture_segment(monkeypatch):
    import segdemo.segment
    from segdemo.result import SegmentationResult

    calls = []

    def fake(loaded, image, task, **kwargs):
        calls.append({k: v for k, v in kwargs.items() if "threshold" in k})
        return SegmentationResult(
            Task.parse(task), np.zeros((image.height, image.width), np.int32), [], CAMVID
        )

    monkeypatch.setattr(segdemo.segment, "segment", fake)
    monkeypatch.setattr(service, "segment", fake)
    return calls


@pytest.mark.parametrize(
    "model_id, flags, expected",
    [
        (PANOPTIC_ID, [], (0.5, 0.5, 0.8)),  # the model's recommendation
        (PANOPTIC_ID, ["--threshold", "0.3"], (0.3, 0.5, 0.8)),  # a flag overrides its value
        (PANOPTIC_ID, ["--mask-threshold", "0.9", "--overlap-threshold", "0.1"], (0.5, 0.9, 0.1)),
        (SEMANTIC_ID, [], (0.9, 0.5, 0.5)),  # no recommendation: the defaults
    ],
)
def test_predict_starts_from_the_recommendation(
    checkpoints, tmp_path, monkeypatch, model_id, flags, expected
):
    from PIL import Image

    calls = _capture_segment(monkeypatch)
    image = tmp_path / "a.png"
    Image.new("RGB", (32, 24), (10, 120, 30)).save(image)
    task = "panoptic" if model_id == PANOPTIC_ID else "semantic"
    args = [
        "predict",
        str(image),
        "--model",
        model_id,
        "--task",
        task,
        "--out",
        str(tmp_path / "o"),
    ]
    assert main([*args, *flags]) == 0
    got = calls[0]
    assert (got["threshold"], got["mask_threshold"], got["overlap_mask_area_threshold"]) == expected


def test_compare_runs_each_model_with_its_recommendation(checkpoints, tmp_path, monkeypatch):
    from PIL import Image

    calls = _capture_segment(monkeypatch)
    ids = {Task.SEMANTIC: SEMANTIC_ID, Task.PANOPTIC: PANOPTIC_ID}
    photo = Image.new("RGB", (32, 24), (10, 120, 30))
    options = service.Options(alpha=0.3)
    service.run_compare(photo, ids, options, tmp_path, recommended_thresholds=True)
    assert calls == [DEFAULT_THRESHOLDS.as_kwargs(), Thresholds(0.5, 0.5, 0.8).as_kwargs()]
    calls.clear()
    service.run_compare(photo, ids, options, tmp_path)  # without: the options' values
    assert calls == [options.thresholds.as_kwargs()] * 2


# --------------------------------------------------------------------------- preselected models


@pytest.mark.parametrize(
    "present, env, expected",
    [
        # offline: the panoptic model serves instance and panoptic; semantic keeps its own
        (
            ["segdemo-camvid", "segdemo-camvid-panoptic"],
            {},
            [SEMANTIC_ID, PANOPTIC_ID, PANOPTIC_ID],
        ),
        # without the panoptic model, the semantic tab is unchanged and the others have none
        (["segdemo-camvid"], {}, [SEMANTIC_ID, None, None]),
        # the panoptic model alone does all three
        (["segdemo-camvid-panoptic"], {}, [PANOPTIC_ID] * 3),
        # on a Space the curated hub models stay preselected
        (
            ["segdemo-camvid", "segdemo-camvid-panoptic"],
            {"SPACE_ID": "me/segdemo", "HF_HUB_OFFLINE": ""},
            [
                "nvidia/segformer-b0-finetuned-ade-512-512",
                "shi-labs/oneformer_ade20k_swin_tiny",
                "shi-labs/oneformer_ade20k_swin_tiny",
            ],
        ),
        (
            ["segdemo-camvid-panoptic"],
            {"SEGDEMO_PREFER_HUB": "1", "HF_HUB_OFFLINE": ""},
            ["nvidia/segformer-b0-finetuned-ade-512-512"]
            + ["shi-labs/oneformer_ade20k_swin_tiny"] * 2,
        ),
    ],
)
def test_default_models(checkpoints, monkeypatch, present, env, expected):
    from segdemo import hub

    for folder in checkpoints.iterdir():
        if folder.name not in present:
            shutil.rmtree(folder)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(hub, "_probe", lambda: pytest.fail("choosing a default sent a request"))
    assert [service.default_model_id(task) for task in Task] == expected


def test_the_app_preselects_and_follows_the_recommendation(checkpoints):
    import app

    demo = app.create_app()
    props = {c["props"].get("elem_id"): c["props"] for c in demo.config["components"]}
    for task in ("instance", "panoptic", "compare-instance", "compare-panoptic"):
        assert props[f"{task}-model"]["value"] == PANOPTIC_ID
    assert props["semantic-model"]["value"] == SEMANTIC_ID
    assert props["compare-semantic-model"]["value"] == SEMANTIC_ID
    for task in ("instance", "panoptic"):
        assert props[f"{task}-threshold"]["value"] == 0.5
        assert props[f"{task}-overlap"]["value"] == 0.8
        assert props[f"{task}-threshold-note"]["value"] == app.RECOMMENDED_NOTE
    # a change of model moves the sliders; the handler is not part of the API
    followers = [fn for fn in demo.fns.values() if fn.name == "threshold_settings"]
    assert len(followers) == 2
    assert all(fn.api_visibility == "private" for fn in followers)
