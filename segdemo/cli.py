"""``python -m segdemo predict`` and ``python -m segdemo models``.

    python -m segdemo predict photo.jpg more/*.png --model local/segdemo-camvid --task semantic --out out/
    python -m segdemo models

``predict`` writes, per image ``NAME``:

* ``NAME_overlay.png``: RGB overlay with contours, labels and a legend;
* ``NAME_labels.png``: the label map at the image's resolution. Semantic: class ids,
  8-bit (16-bit when the model has more than 256 classes). Instance/panoptic: segment
  ids 1..n (0 = none), 16-bit;
* ``NAME_segments.json``: the segments (id, label, label_id, score, area, bbox).

A bad image is reported on stderr in one line naming the file; the other images are
still processed and the exit code is 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from segdemo.result import SegmentationResult, Task


def add_predict_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``predict``; its ``run`` returns the exit code."""
    parser = subparsers.add_parser(
        "predict",
        help="segment images and write overlay, label map and segment list",
        description="Segment images; writes NAME_overlay.png, NAME_labels.png and NAME_segments.json.",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--model", required=True, help="model id (see `python -m segdemo models`)")
    parser.add_argument("--task", required=True, choices=[t.value for t in Task])
    parser.add_argument("--out", required=True, type=Path, help="output folder (created)")
    parser.add_argument("--alpha", type=_unit_float, default=0.5, help="overlay opacity 0..1 (0.5)")
    parser.add_argument(
        "--threshold", type=_unit_float, default=0.9, help="instance/panoptic score threshold (0.9)"
    )
    parser.add_argument(
        "--mask-threshold", type=_unit_float, default=0.5, help="mask probability threshold (0.5)"
    )
    parser.add_argument(
        "--overlap-threshold",
        type=_unit_float,
        default=0.5,
        help="panoptic overlap mask area threshold (0.5)",
    )
    parser.add_argument(
        "--max-size", type=int, default=None, help="cap the model input's longest side (pixels)"
    )
    parser.set_defaults(run=run_predict)
    return parser


def add_models_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``models``; its ``run`` returns the exit code."""
    parser = subparsers.add_parser(
        "models",
        help="list the models on offer, their tasks and offline availability",
        description="List curated hub models and local checkpoints.",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(run=run_models)
    return parser


def _unit_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is outside 0..1")
    return value


def _quiet_transformers() -> None:
    # progress bars and advisory warnings of transformers would bury our one-line messages
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def run_predict(args: argparse.Namespace) -> int:
    """Segment every image; 0 when all succeeded, 1 otherwise."""
    from segdemo import palettes
    from segdemo.images import ImageError, load_image
    from segdemo.models import ModelLoadError, UnsupportedTaskError, load_model
    from segdemo.registry import ModelNotAllowedError
    from segdemo.segment import segment

    _quiet_transformers()
    task = Task.parse(args.task)
    try:
        loaded = load_model(args.model)
        loaded.check_task(task)
    except (ModelNotAllowedError, ModelLoadError, UnsupportedTaskError) as err:
        _error(str(err))
        return 1
    if args.max_size is not None and args.max_size < 32:
        _error(f"--max-size {args.max_size} is too small; use at least 32")
        return 1
    palette = palettes.palette_for(loaded.spec.palette, loaded.id2label)
    args.out.mkdir(parents=True, exist_ok=True)
    failures = 0
    used_names: set[str] = set()
    for source in args.images:
        name = _unique_name(Path(source).stem, used_names)
        try:
            image = load_image(source)
        except ImageError as err:
            _error(str(err))
            failures += 1
            continue
        try:
            result = segment(
                loaded,
                image,
                task,
                threshold=args.threshold,
                mask_threshold=args.mask_threshold,
                overlap_mask_area_threshold=args.overlap_threshold,
                max_size=args.max_size,
            )
        except ValueError as err:  # e.g. an image the processor cannot resize
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            _error(f"{Path(source).name}: segmentation failed ({reason})")
            failures += 1
            continue
        write_outputs(
            args.out, name, image, result, palette, alpha=args.alpha, model_id=loaded.spec.id
        )
        print(f"{source}: {len(result.segments)} segments -> {args.out / name}_*.png")
    return 1 if failures else 0


def _unique_name(stem: str, used: set[str]) -> str:
    """``stem``, or ``stem_2``, ``stem_3``... when two inputs share a file name."""
    name, n = stem, 1
    while name in used:
        n += 1
        name = f"{stem}_{n}"
    used.add(name)
    return name


def write_outputs(
    out_dir: Path,
    name: str,
    image: Image.Image,
    result: SegmentationResult,
    palette: np.ndarray,
    *,
    alpha: float,
    model_id: str,
) -> list[Path]:
    """Write ``NAME_overlay.png``, ``NAME_labels.png`` and ``NAME_segments.json``; returns the paths."""
    from segdemo.render import render

    overlay = render(np.asarray(image), result, palette, alpha=alpha)
    paths = [
        out_dir / f"{name}_{suffix}" for suffix in ("overlay.png", "labels.png", "segments.json")
    ]
    Image.fromarray(overlay).save(paths[0])
    label_png(result).save(paths[1])
    summary = {"image": name, "model": model_id, **result.to_json()}
    paths[2].write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return paths


def label_png(result: SegmentationResult) -> Image.Image:
    """The label map as a PNG-ready image: 8-bit class ids when they fit, else 16-bit."""
    if result.task is Task.SEMANTIC and max(result.id2label, default=0) <= 255:
        return Image.fromarray(result.label_map.astype(np.uint8))
    if int(result.label_map.max(initial=0)) > 65535:
        raise ValueError("more than 65535 segments do not fit a 16-bit PNG")
    return Image.fromarray(result.label_map.astype(np.uint16))


def run_models(args: argparse.Namespace) -> int:
    """Print the registry: id, tasks, offline availability, title."""
    from segdemo.registry import all_models, is_available_offline

    rows = [
        {
            "id": spec.id,
            "tasks": [t.value for t in spec.tasks],
            "offline": is_available_offline(spec),
            "source": spec.source,
            "palette": spec.palette,
            "title": spec.title,
        }
        for spec in all_models()
    ]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    width = max(len(r["id"]) for r in rows) if rows else 10
    print(f"{'model':<{width}}  {'tasks':<27}  {'offline':<7}  title")
    for r in rows:
        tasks = ",".join(r["tasks"])
        print(
            f"{r['id']:<{width}}  {tasks:<27}  {'yes' if r['offline'] else 'no':<7}  {r['title']}"
        )
    return 0
