"""Test-time augmentation: ``segment(..., tta="flip" | "multiscale")``, ``predict``/``evaluate
--tta`` and the app's choice of them. Off by default (the default stays the pipeline's result,
tested in test_segment.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from builders import build_tiny
from PIL import Image

from segdemo import models, service
from segdemo.segment import segment
from segdemo.tta import TTA_SCALES

FAMILIES = ("segformer", "upernet-convnext")


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    root = tmp_path_factory.mktemp("tta")
    for family in (*FAMILIES, "mask2former"):
        build_tiny(family, root / family)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SEGDEMO_CHECKPOINTS", str(root))
        models.clear_cache()
        yield {f: models.load_model(f"local/{f}") for f in (*FAMILIES, "mask2former")}
        models.clear_cache()


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:50, 0:77]
    base = np.stack([x * 4, y * 3, (2 * x + y) * 2], axis=-1) % 256
    return Image.fromarray(
        np.clip(base + rng.integers(0, 50, (50, 77, 3)), 0, 255).astype(np.uint8)
    )


def _reference_scores(model, image, scale=1.0):
    """``C x h x w`` class scores through transformers' own processor and post-processing;
    ``scale`` != 1: its ``size`` argument is the resize target times ``scale``, sides rounded
    to multiples of 8."""
    processor = model.processor
    height, width = processor.size["height"], processor.size["width"]
    size = {"height": round(height * scale / 8) * 8, "width": round(width * scale / 8) * 8}
    inputs = processor(
        images=[image], return_tensors="pt", **({"size": size} if scale != 1 else {})
    )
    with torch.inference_mode():
        out = model.model(**inputs)
    return processor.post_process_semantic_segmentation(
        out, target_sizes=None, return_segmentation_scores=True
    )[0].segmentation_scores


@pytest.mark.parametrize("family", FAMILIES)
def test_flip_averages_the_scores_of_the_image_and_its_mirror(loaded, photo, family):
    """Reference: the model through transformers' own processor and post-processing on both
    images, mirrored back, averaged, upsampled by torch's bilinear interpolate, argmax."""
    model = loaded[family]
    mirror = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    mean = (_reference_scores(model, photo) + _reference_scores(model, mirror).flip(-1)) / 2
    want = torch.nn.functional.interpolate(
        mean[None], size=(photo.height, photo.width), mode="bilinear", align_corners=False
    )[0].argmax(0)
    got = segment(model, photo, "semantic", tta="flip").label_map
    np.testing.assert_array_equal(got, want.numpy())
    plain = segment(model, photo, "semantic").label_map
    assert (got != plain).any(), "the case must show that TTA changes something"
    assert len(np.unique(got)) >= 2


@pytest.mark.parametrize("family", FAMILIES)
def test_multiscale_averages_probabilities_over_scales_and_mirrors(loaded, photo, family):
    """Reference: transformers' processor at each scaled size (its ``size`` argument) and its
    own post-processing; scores resized to the one-pass score size, softmax, mean over
    scales and mirrors, upsampled by torch's bilinear interpolate, argmax."""
    model = loaded[family]
    mirror = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    base = _reference_scores(model, photo).shape[-2:]
    probs = []
    for scale in TTA_SCALES:
        for view, back in ((photo, lambda x: x), (mirror, lambda x: x.flip(-1))):
            resized = torch.nn.functional.interpolate(
                back(_reference_scores(model, view, scale))[None],
                size=base,
                mode="bilinear",
                align_corners=False,
            )
            probs.append(resized[0].softmax(0))
    mean = torch.stack(probs).mean(0)
    want = torch.nn.functional.interpolate(
        mean[None], size=(photo.height, photo.width), mode="bilinear", align_corners=False
    )[0].argmax(0)
    got = segment(model, photo, "semantic", tta="multiscale").label_map
    np.testing.assert_array_equal(got, want.numpy())
    flip = segment(model, photo, "semantic", tta="flip").label_map
    assert (got != flip).any(), "the case must show that the extra scales change something"


@pytest.mark.parametrize("family", FAMILIES)
def test_flip_tta_commutes_with_mirroring_the_input(loaded, photo, family):
    mirror = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    a = segment(loaded[family], photo, "semantic", tta="flip").label_map
    b = segment(loaded[family], mirror, "semantic", tta="flip").label_map
    np.testing.assert_array_equal(a[:, ::-1], b)


@pytest.mark.parametrize(
    "task, tta, message",
    [
        ("instance", "flip", "for semantic segmentation"),
        ("semantic", "rot90", "tta must be one of"),
    ],
)
def test_bad_tta_is_one_line(loaded, photo, task, tta, message):
    with pytest.raises(ValueError, match=message):
        segment(loaded["mask2former"], photo, task, tta=tta)


@pytest.mark.parametrize("tta", ["flip", "multiscale"])
def test_service_option_runs_the_same_function(loaded, photo, tmp_path, tta):
    model_id = loaded["segformer"].spec.id
    output = service.run_task(
        photo, model_id, "semantic", service.Options(tta=tta), tmp_path, name="p.png"
    )
    want = segment(loaded["segformer"], photo, "semantic", tta=tta).label_map
    got = np.asarray(Image.open(output.label_map_png))
    np.testing.assert_array_equal(got, want)
    with pytest.raises(service.RequestError, match="for semantic segmentation only"):
        service.run_task(
            photo, "local/mask2former", "instance", service.Options(tta="flip"), tmp_path
        )


def test_cli_predict_and_evaluate_take_tta(loaded, photo, tmp_path, capsys):
    from segdemo.__main__ import main

    folder = loaded["segformer"].spec.path
    photo.save(tmp_path / "p.png")
    args = ["predict", str(tmp_path / "p.png"), "--model", str(folder), "--task", "semantic"]
    assert main([*args, "--out", str(tmp_path / "out"), "--tta", "flip"]) == 0
    got = np.asarray(Image.open(tmp_path / "out" / "p_labels.png"))
    want = segment(loaded["segformer"], photo, "semantic", tta="flip").label_map
    np.testing.assert_array_equal(got, want)
    assert main([*args, "--out", str(tmp_path / "o2"), "--tta", "flip", "--batch-size", "2"]) == 1
    assert "--tta flip runs one image at a time" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "o3"), "--tta", "multiscale"]) == 0
    got = np.asarray(Image.open(tmp_path / "o3" / "p_labels.png"))
    want = segment(loaded["segformer"], photo, "semantic", tta="multiscale").label_map
    np.testing.assert_array_equal(got, want)
    evaluate = ["evaluate", "--task", "panoptic", "--data-dir", str(tmp_path), "--tta", "flip"]
    assert main([*evaluate, "--model", str(folder), "--out", str(tmp_path / "m.json")]) != 0
    assert "--tta flip applies to --task semantic" in capsys.readouterr().err
