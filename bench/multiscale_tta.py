"""Is multi-scale test-time augmentation worth building into ``segment()``? Scores a semantic
model with its class probabilities averaged over several input scales (and their mirror
images) on a folder dataset's split or held-out groups, as ``segdemo evaluate`` would.

    python bench/multiscale_tta.py --model /tmp/camvid-sweep/I-8000-bright \\
        --data-dir ../shared/datasets/camvid --val-groups 0001TP --ignore-index 11 \\
        --scales 1.0 1.25 1.5 --flip

Scale ``s`` resizes the photo to the processor's resize target times ``s``
(:func:`segdemo.segment.scaled_size`, as ``--tta multiscale`` does). Each pass's logits are upsampled bilinearly to the annotation's size and
softmaxed; the label is the argmax of their mean. ``--scales 1.0`` without ``--flip`` is
``segdemo evaluate``'s one pass (same label maps). This is a measurement, not the product: it
holds ``C x H x W`` floats per image (fine at CamVid's 360x480, not at 12 MP).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segdemo.data import group_list  # noqa: E402
from segdemo.evaluate import build_report, evaluate_folder  # noqa: E402
from segdemo.models import load_model  # noqa: E402
from segdemo.result import Task  # noqa: E402
from segdemo.segment import model_inputs, run_model, semantic_scores  # noqa: E402


def multiscale_predictor(model_id: str, scales: list[float], flip: bool):
    """A :data:`segdemo.evaluate.Predictor` averaging softmax scores over scales (x flip);
    each pass is the product's (``model_inputs(..., scale=)``, ``semantic_scores``)."""
    loaded = load_model(model_id, allow_any=True)

    def predict(name: str, image: Image.Image | None, size: tuple[int, int]) -> np.ndarray:
        views = [(image, False)]
        if flip:
            views.append((image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), True))
        total = None
        with torch.inference_mode():
            for scale in scales:
                for view, mirrored in views:
                    inputs = model_inputs(loaded, view, Task.SEMANTIC, scale=scale)
                    scores = semantic_scores(loaded, run_model(loaded, inputs))[None]
                    scores = F.interpolate(scores, size=size, mode="bilinear", align_corners=False)
                    probs = (scores.flip(-1) if mirrored else scores).softmax(dim=1)
                    total = probs if total is None else total + probs
        return total[0].argmax(dim=0).numpy()

    return predict, loaded.id2label


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="a semantic checkpoint folder or model id")
    parser.add_argument("--data-dir", required=True, help="a segdemo folder dataset")
    parser.add_argument("--split", default="val")
    parser.add_argument(
        "--val-groups", default=None, help="score these groups of train+val instead"
    )
    parser.add_argument("--ignore-index", type=int, default=None)
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0])
    parser.add_argument("--flip", action="store_true", help="also the mirror image of every scale")
    parser.add_argument("--out", type=Path, default=None, help="write the report JSON here")
    args = parser.parse_args(argv)
    predict, _ = multiscale_predictor(args.model, args.scales, args.flip)
    groups = group_list(args.val_groups) or None
    matrix, id2label, count = evaluate_folder(
        args.data_dir, predict, split=args.split, ignore_index=args.ignore_index, groups=groups
    )
    report = build_report(
        matrix.compute(),
        id2label,
        {
            "model": args.model,
            "scales": args.scales,
            "flip": args.flip,
            "val_groups": groups,
            "split": args.split if groups is None else "train+val",
            "num_images": count,
        },
    )
    print(f"scales {args.scales} flip {args.flip}: mIoU {report['mean_iou']:.4f} ({count} images)")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
