"""segdemo.segment: same answers as transformers.pipeline("image-segmentation"), for every
family and task, on tiny random-init models (thresholds 0 so they emit segments)."""

from __future__ import annotations

import inspect
import shutil
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from segdemo import models
from segdemo.images import load_image
from segdemo.models import UnsupportedTaskError, load_model
from segdemo.result import Task
from segdemo.segment import capped_size, segment
from segdemo.upsample import upsample_argmax
from tests.builders import FAMILIES, SEMANTIC_FAMILIES, UNIVERSAL_FAMILIES, build_tiny

ALL_TASKS = (Task.SEMANTIC, Task.INSTANCE, Task.PANOPTIC)
PERMISSIVE = {"threshold": 0.0, "mask_threshold": 0.0, "overlap_mask_area_threshold": 0.0}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("segment-checkpoints")
    for family in FAMILIES:
        build_tiny(family, root / family)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SEGDEMO_CHECKPOINTS", str(root))
        patch.setenv("SEGDEMO_MODEL_CACHE", "1")  # one at a time: keeps the test's memory flat
        models.clear_cache()
        yield root
        models.clear_cache()


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A 48x80 (not square, not the model's 64) image with smooth structure and noise."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:48, 0:80]
    base = np.stack([x * 3, y * 5, (x + y) * 2], axis=-1) % 256
    noise = rng.integers(0, 60, size=(48, 80, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


@pytest.fixture()
def torchvision_free_oneformer(monkeypatch):
    """Let the real OneFormer post-processor run without torchvision.

    transformers calls ``tvF.resize(mask_probs[None], size=target_size,
    interpolation=BILINEAR)`` (torchvision v2) in OneFormer's ``compute_segments`` and
    fails with NameError when torchvision is absent. The stand-in is what torchvision does
    with those arguments, not a copy of segdemo's code (which emulates the same kernel with
    its own taps, :mod:`segdemo.mask_bands`): ``torchvision/transforms/v2/functional/
    _geometry.py``'s ``resize`` dispatches a plain tensor to ``resize_image``, which, for
    ``BILINEAR`` and the default ``antialias=True``, sets ``align_corners=False``, returns
    the input when the size is unchanged, takes a 2-element ``size`` as the exact
    ``(height, width)``, keeps float32 as is (no cast), and calls
    ``torch.nn.functional.interpolate(image.reshape(-1, C, H, W), size=[h, w],
    mode="bilinear", align_corners=False, antialias=True)``. Antialiasing changes the
    result only when a mask is shrunk: ``test_oneformer_shrinks_masks_like_torchvision``
    covers that case.
    """
    import transformers.models.oneformer.image_processing_pil_oneformer as module

    def resize(masks, size, interpolation=None):
        if tuple(masks.shape[-2:]) == tuple(size):
            return masks
        return F.interpolate(masks, size=size, mode="bilinear", align_corners=False, antialias=True)

    shim = types.SimpleNamespace(
        resize=resize, InterpolationMode=types.SimpleNamespace(BILINEAR="bilinear")
    )
    monkeypatch.setattr(module, "tvF", shim, raising=False)


def _pipeline(loaded):
    from transformers import pipeline

    processor = loaded.processor
    return pipeline(
        "image-segmentation",
        model=loaded.model,
        image_processor=getattr(processor, "image_processor", processor),
        tokenizer=getattr(processor, "tokenizer", None),
        device=loaded.device,
    )


PARITY = [(family, Task.SEMANTIC) for family in SEMANTIC_FAMILIES] + [
    (family, task) for family in UNIVERSAL_FAMILIES for task in ALL_TASKS
]


@pytest.mark.parametrize("family, task", PARITY, ids=[f"{f}-{t.value}" for f, t in PARITY])
def test_same_as_transformers_pipeline(
    checkpoints, photo, torchvision_free_oneformer, family, task
):
    loaded = load_model(f"local/{family}")
    kwargs = {} if task is Task.SEMANTIC else PERMISSIVE
    expected = _pipeline(loaded)(photo, subtask=task.value, **kwargs)
    result = segment(loaded, photo, task, **kwargs)

    assert result.label_map.shape == (photo.height, photo.width)
    assert result.label_map.dtype == np.int32
    # a row worth comparing: one class over the whole image, or one segment, would let an
    # argmax taken before upsampling (or any spatial mistake) pass
    non_empty = [e for e in expected if (np.asarray(e["mask"]) == 255).any()]
    assert len(non_empty) >= 2, f"{family} {task.value}: {len(non_empty)} non-empty segments"
    assert [s.label for s in result.segments] == [e["label"] for e in expected]
    assert [s.score for s in result.segments] == [e["score"] for e in expected]
    for seg, ref in zip(result.segments, expected, strict=True):
        np.testing.assert_array_equal(result.mask(seg.id), np.asarray(ref["mask"]) == 255)
        assert seg.area == int((np.asarray(ref["mask"]) == 255).sum())
    if task is not Task.SEMANTIC:
        assert len(expected) > 0, "the tiny model should emit segments at threshold 0"
        assert [s.id for s in result.segments] == list(range(1, len(expected) + 1))


@pytest.mark.parametrize("task", [Task.INSTANCE, Task.PANOPTIC])
def test_oneformer_shrinks_masks_like_torchvision(checkpoints, torchvision_free_oneformer, task):
    """An image smaller than OneFormer's mask grid (16x20 vs 16x~27 masks for a 64-pixel
    input): its masks are shrunk, where torchvision's antialiased resize differs from plain
    bilinear interpolation, and segdemo must follow it."""
    rng = np.random.default_rng(1)
    small = Image.fromarray(rng.integers(0, 256, (12, 20, 3), dtype=np.uint8))
    loaded = load_model("local/oneformer")
    expected = _pipeline(loaded)(small, subtask=task.value, **PERMISSIVE)
    result = segment(loaded, small, task, **PERMISSIVE)
    assert sum((np.asarray(e["mask"]) == 255).any() for e in expected) >= 2
    assert [(s.label, s.score) for s in result.segments] == [
        (e["label"], e["score"]) for e in expected
    ]
    for seg, ref in zip(result.segments, expected, strict=True):
        np.testing.assert_array_equal(result.mask(seg.id), np.asarray(ref["mask"]) == 255)


def test_semantic_models_see_several_classes(checkpoints, photo):
    """Guard for the parity test: a one-class answer would compare almost nothing."""
    result = segment(load_model("local/segformer"), photo, Task.SEMANTIC)
    assert len(result.segments) >= 2


@pytest.mark.parametrize("task", [Task.INSTANCE, Task.PANOPTIC])
def test_default_thresholds_match_the_pipeline(
    checkpoints, photo, torchvision_free_oneformer, task
):
    """Neither side is given thresholds: each uses its own defaults (pipeline: 0.9 / 0.5 /
    0.5). The tiny OneFormer scores some queries just above 0.9 on this photo, so there
    are segments to compare, and a higher score threshold or other mask/overlap thresholds
    change them (a lower score threshold need not: the next test reads the values)."""
    loaded = load_model("local/oneformer")
    expected = _pipeline(loaded)(photo, subtask=task.value)
    result = segment(loaded, photo, task)
    assert sum((np.asarray(e["mask"]) == 255).any() for e in expected) >= 2
    assert [(s.label, s.score) for s in result.segments] == [
        (e["label"], e["score"]) for e in expected
    ]
    for seg, ref in zip(result.segments, expected, strict=True):
        np.testing.assert_array_equal(result.mask(seg.id), np.asarray(ref["mask"]) == 255)


def test_default_thresholds_are_the_pipelines_in_every_front_end():
    """segdemo's defaults, wherever a caller meets them, are read against transformers'
    own: the keyword defaults of ``ImageSegmentationPipeline.postprocess``."""
    from transformers.pipelines.image_segmentation import ImageSegmentationPipeline

    from segdemo import service
    from segdemo.thresholds import DEFAULT_THRESHOLDS

    def threshold_defaults(function):
        parameters = inspect.signature(function).parameters.items()
        return {name: p.default for name, p in parameters if name.endswith("threshold")}

    pipeline = threshold_defaults(ImageSegmentationPipeline.postprocess)
    assert set(pipeline) == {"threshold", "mask_threshold", "overlap_mask_area_threshold"}
    assert threshold_defaults(segment) == pipeline
    assert DEFAULT_THRESHOLDS.as_kwargs() == pipeline
    assert service.Options().thresholds.as_kwargs() == pipeline


def test_segment_fields_agree_with_label_map(checkpoints, photo):
    result = segment(load_model("local/maskformer"), photo, Task.INSTANCE, **PERMISSIVE)
    assert result.segments, "needs segments"
    for seg in result.segments:
        mask = result.mask(seg.id)
        assert seg.area == mask.sum()
        if seg.area:
            ys, xs = np.nonzero(mask)
            assert seg.bbox == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert 0.0 <= seg.score <= 1.0 and seg.label_id in result.id2label
    assert set(np.unique(result.label_map)) <= {0} | {s.id for s in result.segments}


def test_fused_labels_give_one_stuff_segment_per_class(checkpoints, photo):
    loaded = load_model("local/mask2former")
    result = segment(loaded, photo, Task.PANOPTIC, label_ids_to_fuse={0, 1, 2, 3}, **PERMISSIVE)
    label_ids = [s.label_id for s in result.segments if s.area]
    assert len(label_ids) == len(set(label_ids)) > 0
    assert all(s.is_thing is False for s in result.segments)


def test_oneformer_panoptic_marks_things_from_its_metadata(checkpoints, photo):
    result = segment(load_model("local/oneformer"), photo, Task.PANOPTIC, **PERMISSIVE)
    assert result.segments
    for seg in result.segments:
        assert seg.is_thing is (seg.label in {"car", "person"})


def test_semantic_only_model_refuses_instance(checkpoints, photo):
    with pytest.raises(UnsupportedTaskError, match="supports: semantic"):
        segment(load_model("local/segformer"), photo, "instance")


# --------------------------------------------------------------------------- max_size


@pytest.mark.parametrize(
    "size, image_hw, cap, expected",
    [
        ({"height": 512, "width": 512}, (3000, 4000), 256, {"height": 256, "width": 256}),
        ({"height": 512, "width": 512}, (3000, 4000), 512, None),  # already fits
        # shortest/longest edges: the longest side of a 4:3 image would be 1333 -> capped
        (
            {"shortest_edge": 800, "longest_edge": 1333},
            (3000, 4000),
            640,
            {"shortest_edge": 640, "longest_edge": 640},
        ),
        ({"shortest_edge": 384, "longest_edge": 1333}, (300, 400), 640, None),  # 384x512 fits
        ({"shortest_edge": 512}, (3000, 4000), 400, {"shortest_edge": 300}),  # 4:3 -> 300x400
        ({"longest_edge": 1024}, (3000, 4000), 512, {"longest_edge": 512}),
    ],
)
def test_capped_size(size, image_hw, cap, expected):
    assert capped_size(size, image_hw, cap) == expected


@pytest.mark.parametrize("family", ["segformer", "mask2former"])
def test_max_size_caps_model_input_not_output(checkpoints, photo, family):
    loaded = load_model(f"local/{family}")
    seen = []
    hook = loaded.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(tuple(kwargs["pixel_values"].shape[-2:])),
        with_kwargs=True,
    )
    try:
        result = segment(loaded, photo, Task.SEMANTIC, max_size=48)
        segment(loaded, photo, Task.SEMANTIC)
    finally:
        hook.remove()
    assert max(seen[0]) <= 64 and max(seen[0]) < max(seen[1])
    assert result.label_map.shape == (photo.height, photo.width)


# --------------------------------------------------------------------------- images


def _mode(image: Image.Image, mode: str) -> Image.Image:
    if mode == "I;16":
        return Image.fromarray(np.asarray(image.convert("L")).astype(np.uint16) * 257)
    if mode in ("RGBA", "LA"):
        converted = image.convert(mode)
        converted.putalpha(Image.linear_gradient("L").resize(image.size))
        return converted
    return image.convert(mode)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "1"])
def test_any_image_mode_is_converted_like_load_image(checkpoints, photo, mode):
    loaded = load_model("local/segformer")
    image = _mode(photo, mode)
    result = segment(loaded, image, Task.SEMANTIC)
    expected = segment(loaded, load_image(image), Task.SEMANTIC)
    assert result.label_map.shape == (photo.height, photo.width)
    np.testing.assert_array_equal(result.label_map, expected.label_map)


def test_array_and_path_inputs(checkpoints, photo, tmp_path):
    loaded = load_model("local/segformer")
    reference = segment(loaded, photo, Task.SEMANTIC).label_map
    photo.save(tmp_path / "photo.png")
    np.testing.assert_array_equal(
        segment(loaded, np.asarray(photo), Task.SEMANTIC).label_map, reference
    )
    np.testing.assert_array_equal(
        segment(loaded, tmp_path / "photo.png", Task.SEMANTIC).label_map, reference
    )


# --------------------------------------------------------------------------- upsample_argmax


def _reference_argmax(logits: torch.Tensor, size) -> np.ndarray:
    return (
        F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]
        .argmax(0)
        .numpy()
    )


def _smooth(classes, h, w, seed, scale=1.0):
    generator = torch.Generator().manual_seed(seed)
    return scale * torch.randn(classes, h, w, generator=generator)


# (case, logits, output size, memory budget or None, path segdemo must take or None)
UPSAMPLE = [
    ("random, upsample", _smooth(7, 5, 6, 0), (37, 41), None, "chunked"),
    ("random, downsample", _smooth(5, 40, 30, 1), (13, 7), None, "chunked"),
    ("one row of logits", _smooth(4, 1, 9, 2), (20, 33), None, "chunked"),
    ("one class", _smooth(1, 4, 4, 3), (10, 10), None, "chunked"),
    ("all equal: ties go to class 0", torch.zeros(6, 4, 4), (9, 9), None, "chunked"),
    (
        "half the classes tie",
        torch.cat([torch.ones(3, 4, 4), torch.zeros(3, 4, 4)]),
        (9, 9),
        None,
        "chunked",
    ),
    (
        "one dominant class",
        torch.cat([_smooth(20, 6, 6, 4), 10 + _smooth(1, 6, 6, 5)]),
        (31, 29),
        None,
        "chunked",
    ),
    ("chunks of one class", _smooth(9, 6, 5, 6), (25, 26), 4 * 25 * 26, "chunked"),
    ("chunks of two classes", _smooth(9, 6, 5, 7), (25, 26), 2 * 4 * 25 * 26, "chunked"),
    # geometries where PyTorch takes its separable kernel: the emulated fast path
    ("fast: 150 flat classes", _smooth(150, 32, 32, 8, scale=0.03), (128, 170), None, "sparse"),
    ("fast: 20 classes, wide", _smooth(20, 24, 32, 9), (60, 200), None, "sparse"),
    ("fast: small budget", _smooth(20, 24, 32, 10), (100, 130), 4096, "sparse"),
    (
        "fast: ties",
        torch.cat([torch.ones(4, 24, 32), torch.zeros(4, 24, 32)]),
        (100, 130),
        None,
        "sparse",
    ),
    # downsampling: PyTorch 2.13 takes another kernel here, so either path is fine
    ("downsample, wide", _smooth(12, 40, 96, 11), (30, 70), None, None),
]


@pytest.mark.parametrize(
    "case, logits, size, budget, path", UPSAMPLE, ids=[row[0] for row in UPSAMPLE]
)
def test_upsample_argmax_equals_full_interpolation(monkeypatch, case, logits, size, budget, path):
    from segdemo import upsample

    taken = []
    for name in ("_sparse", "_chunked"):
        real = getattr(upsample, name)
        monkeypatch.setattr(
            upsample,
            name,
            lambda *a, _real=real, _name=name, **k: taken.append(_name) or _real(*a, **k),
        )
    kwargs = {} if budget is None else {"budget_bytes": budget}
    result = upsample_argmax(logits, size, **kwargs)
    assert result.dtype == np.int32 and result.shape == size
    np.testing.assert_array_equal(result, _reference_argmax(logits, size))
    if path is not None:
        assert taken == [f"_{path}"]


@pytest.mark.parametrize(
    "classes, chunk, total, threads, sizes",
    [
        (10, 4, 10, 2, [4, 4, 2]),
        (10, 3, 10, 2, [3, 3, 3, 1]),
        # one thread: PyTorch has a separate 3-channel kernel, so no chunk may hold 3 classes
        (10, 3, 10, 1, [2, 1, 2, 1, 2, 1, 1]),
        (7, 4, 7, 1, [4, 2, 1]),
        # ...except a 3-class model, which the reference interpolates with that kernel too
        (3, 1, 3, 1, [3]),
    ],
)
def test_chunks_follow_pytorch_kernel_choice(monkeypatch, classes, chunk, total, threads, sizes):
    from segdemo import upsample

    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    groups = upsample._groups(torch.arange(classes), chunk, total)
    assert [g.numel() for g in groups] == sizes
    assert torch.equal(torch.cat(groups), torch.arange(classes))


def test_copy_of_checkpoint_is_independent(checkpoints, tmp_path):
    """Loading by id serves the folder's current contents (copy under a new name)."""
    shutil.copytree(checkpoints / "segformer", checkpoints / "segformer-copy")
    try:
        assert load_model("local/segformer-copy").model_type == "segformer"
    finally:
        shutil.rmtree(checkpoints / "segformer-copy")
