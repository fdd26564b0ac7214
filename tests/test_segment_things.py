"""Models that declare their things (segdemo.json ``thing_ids``, written by train/run.py):
panoptic results fuse the stuff classes, instance results hold the things only; both are
the transformers pipeline's results with that fusing / filtering, nothing else."""

from __future__ import annotations

import json

import numpy as np
import pytest
from builders import DEFAULT_ID2LABEL, build_tiny
from PIL import Image

from segdemo.models import clear_cache, load_model
from segdemo.segment import segment

THRESHOLDS = dict(threshold=0.0, mask_threshold=0.4, overlap_mask_area_threshold=0.0)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("things")
    build_tiny("mask2former", root / "plain")
    declared = build_tiny("mask2former", root / "declared")
    things = sorted(DEFAULT_ID2LABEL)[len(DEFAULT_ID2LABEL) // 2 :]
    (declared / "segdemo.json").write_text(json.dumps({"thing_ids": things}))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SEGDEMO_CHECKPOINTS", str(root))
        clear_cache()
        yield load_model("local/plain"), load_model("local/declared"), set(things)
    clear_cache()


@pytest.fixture(scope="module")
def photo():
    """48x80, smooth structure plus noise (as test_segment.py's photo)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:48, 0:80]
    base = np.stack([x * 3, y * 5, (x + y) * 2], axis=-1) % 256
    noise = rng.integers(0, 60, size=(48, 80, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def test_panoptic_fuses_the_stuff_of_a_model_that_declares_its_things(models, photo):
    plain, declared, things = models
    stuff = set(DEFAULT_ID2LABEL) - things
    want = segment(plain, photo, "panoptic", label_ids_to_fuse=stuff, **THRESHOLDS)
    got = segment(declared, photo, "panoptic", **THRESHOLDS)
    np.testing.assert_array_equal(got.label_map, want.label_map)
    assert [(s.label_id, s.area) for s in got.segments] == [
        (s.label_id, s.area) for s in want.segments
    ]
    assert {s.is_thing for s in got.segments if s.label_id in things} == {True}
    assert {s.is_thing for s in got.segments if s.label_id in stuff} <= {False}
    unfused = segment(plain, photo, "panoptic", **THRESHOLDS)
    shown = [s.label_id for s in got.segments if s.area]  # a fused class's pixels carry one id
    assert len([s for s in unfused.segments if s.area]) > len(shown)  # the case fuses something
    assert len([i for i in shown if i not in things]) == len({i for i in shown if i not in things})


def test_instance_keeps_only_the_declared_things(models, photo):
    plain, declared, things = models
    everything = segment(plain, photo, "instance", **THRESHOLDS)
    got = segment(declared, photo, "instance", **THRESHOLDS)
    assert {s.label_id for s in everything.segments} - things, "the case has stuff to drop"
    kept = [s for s in everything.segments if s.label_id in things]
    assert len(kept) >= 2
    assert [(s.label_id, s.score, s.area) for s in got.segments] == [
        (s.label_id, s.score, s.area) for s in kept
    ]
    assert [s.id for s in got.segments] == list(range(1, len(kept) + 1))
    for new, old in zip(got.segments, kept, strict=True):
        np.testing.assert_array_equal(got.label_map == new.id, everything.label_map == old.id)
    assert set(np.unique(got.label_map)) <= {0, *range(1, len(kept) + 1)}
