"""bench/multiscale_tta.py: at one scale without flip it is ``segdemo evaluate``'s one pass."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from builders import build_tiny
from PIL import Image

from segdemo.evaluate import model_predictor
from tests.test_evaluate import ID2LABEL, VOID, run_cli, write_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import multiscale_tta  # noqa: E402


def test_one_scale_without_flip_is_the_evaluate_pass(tmp_path):
    raws = write_dataset(tmp_path / "data", n=3)
    model = build_tiny("segformer", tmp_path / "model", id2label=ID2LABEL, image_size=32)
    ours, _ = multiscale_tta.multiscale_predictor(str(model), [1.0], flip=False)
    product, _ = model_predictor(str(model))
    for name, raw in raws.items():
        image = Image.open(tmp_path / "data" / "val" / "images" / f"{name}.jpg").convert("RGB")
        np.testing.assert_array_equal(ours(name, image, raw.shape), product(name, image, raw.shape))
    # the same report numbers as the product's command, and a multi-scale flip run completes
    out = tmp_path / "ms.json"
    common = ["--data-dir", str(tmp_path / "data"), "--ignore-index", str(VOID)]
    assert multiscale_tta.main(["--model", str(model), *common, "--out", str(out)]) == 0
    assert run_cli("--model", model, *common, "--out", tmp_path / "ev.json") == 0
    ms, ev = (json.loads((tmp_path / n).read_text()) for n in ("ms.json", "ev.json"))
    assert ms["mean_iou"] == ev["mean_iou"] and ms["per_category_iou"] == ev["per_category_iou"]
    argv = ["--model", str(model), *common, "--scales", "1.0", "1.5", "--flip"]
    assert multiscale_tta.main([*argv, "--out", str(out)]) == 0
    assert json.loads(out.read_text())["evaluation"]["num_images"] == 3
