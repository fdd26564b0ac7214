"""``python -m segdemo predict`` and ``python -m segdemo models``.

    python -m segdemo predict photo.jpg more/*.png --model local/segdemo-camvid --task semantic --out out/
    python -m segdemo predict photo.jpg --model ./runs/mine --task panoptic --out out/
    python -m segdemo models

``--model`` takes a registry id, a checkpoint folder or a hub id: the person typing the
command is the operator, so the app's allowlist (``SEGDEMO_ALLOW_ANY_MODEL``) does not
apply here.

``predict`` writes, per image ``NAME``, the files of :mod:`segdemo.result_files` (the
app's downloads are written by the same code):

* ``NAME_overlay.png``: RGB overlay with contours, labels and a legend;
* ``NAME_labels.png``: the label map at the image's resolution: class ids (semantic) or
  segment ids 1..n, 0 = none (instance/panoptic); 8-bit, 16-bit when ids exceed 255;
* ``NAME_segments.json``: the segments (id, label, label_id, score, area, bbox).

Instance/panoptic thresholds start from the model's recommended ones (its
``segdemo.json``), else the defaults of :mod:`segdemo.thresholds`; each flag overrides one.

A bad image is reported on stderr in one line naming the file; the other images are
still processed and the exit code is 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from segdemo.errors import SegdemoError
from segdemo.result import Task
from segdemo.thresholds import DEFAULT_THRESHOLDS, Thresholds


def add_predict_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``predict``; its ``run`` returns the exit code."""
    parser = subparsers.add_parser(
        "predict",
        help="segment images and write overlay, label map and segment list",
        description="Segment images; writes NAME_overlay.png, NAME_labels.png and NAME_segments.json.",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument(
        "--model",
        required=True,
        help="model id (see `python -m segdemo models`), checkpoint folder, or hub id",
    )
    parser.add_argument(
        "--task", required=True, choices=[t.value for t in Task], help="what to segment"
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder (created)")
    parser.add_argument("--alpha", type=_unit_float, default=0.5, help="overlay opacity 0..1 (0.5)")
    recommended = "the model's recommended value, else"
    parser.add_argument(
        "--threshold",
        type=_unit_float,
        default=None,
        help=f"instance/panoptic score threshold ({recommended} {DEFAULT_THRESHOLDS.threshold})",
    )
    parser.add_argument(
        "--mask-threshold",
        type=_unit_float,
        default=None,
        help=f"mask probability threshold ({recommended} {DEFAULT_THRESHOLDS.mask_threshold})",
    )
    parser.add_argument(
        "--overlap-threshold",
        type=_unit_float,
        default=None,
        help="panoptic overlap mask area threshold "
        f"({recommended} {DEFAULT_THRESHOLDS.overlap_mask_area_threshold})",
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


def thresholds_from_args(args: argparse.Namespace, start: Thresholds) -> Thresholds:
    """``start`` (the model's recommendation or the defaults) with the flags given replacing it."""
    given = {
        "threshold": args.threshold,
        "mask_threshold": args.mask_threshold,
        "overlap_mask_area_threshold": args.overlap_threshold,
    }
    return Thresholds.from_mapping({k: v for k, v in given.items() if v is not None}, start)


def run_predict(args: argparse.Namespace) -> int:
    """Segment every image; 0 when all succeeded, 1 otherwise."""
    from segdemo import palettes
    from segdemo.images import load_image
    from segdemo.models import load_model
    from segdemo.render import render
    from segdemo.result_files import write_result_files
    from segdemo.segment import segment

    _quiet_transformers()
    if args.max_size is not None and args.max_size < 32:
        _error(f"--max-size {args.max_size} is too small; use at least 32")
        return 1
    try:
        # the person at the command line is the operator: folders and hub ids are allowed
        loaded = load_model(args.model, allow_any=True)
        task = loaded.check_task(args.task)
    except SegdemoError as err:
        _error(str(err))
        return 1
    thresholds = thresholds_from_args(args, loaded.spec.thresholds())
    palette = palettes.palette_for(loaded.spec.palette, loaded.id2label)
    args.out.mkdir(parents=True, exist_ok=True)
    failures = 0
    used_names: set[str] = set()
    for source in args.images:
        name = _unique_name(Path(source).stem, used_names)
        try:
            image = load_image(source)
            result = segment(loaded, image, task, **thresholds.as_kwargs(), max_size=args.max_size)
        except SegdemoError as err:
            _error(str(err))
            failures += 1
            continue
        except ValueError as err:  # e.g. an image the processor cannot resize
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            _error(f"{Path(source).name}: segmentation failed ({reason})")
            failures += 1
            continue
        overlay = render(np.asarray(image), result, palette, alpha=args.alpha)
        write_result_files(
            args.out,
            name,
            result,
            model_id=loaded.spec.id,
            image_name=Path(source).name,
            overlay=overlay,
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


def run_models(args: argparse.Namespace) -> int:
    """Print the registry: id, tasks, offline availability, title."""
    from segdemo.hub import is_available_offline
    from segdemo.registry import all_models

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
