"""``python -m segdemo evaluate``: mIoU of a model, or of saved predictions, on a folder dataset.

    python -m segdemo evaluate --model checkpoints/camvid --data-dir ../shared/datasets/camvid \\
        --ignore-index 11 --out metrics.json
    python -m segdemo evaluate --pred-dir out/ --data-dir ../shared/datasets/camvid \\
        --ignore-index 11 --out metrics.json     # scores out/NAME_labels.png from `predict`

The dataset is the folder layout of :mod:`segdemo.data` (``DIR/SPLIT/images``,
``DIR/SPLIT/annotations``, ``DIR/id2label.json``). Annotations become training ids
through :func:`segdemo.labels.to_train_ids` (``--reduce-labels``, ``--ignore-index``);
scoring is :class:`segdemo.metrics.ConfusionMatrix` (🤗 evaluate's ``mean_iou``
semantics), always at the annotation's resolution.

The JSON written to ``--out`` holds ``mean_iou``, ``mean_accuracy``,
``overall_accuracy``, ``per_category_iou`` and ``per_category_accuracy`` (objects keyed
by class name; ``null`` for a class absent from both predictions and references) and
an ``evaluation`` object recording what was scored.

``--task instance|panoptic`` scores COCO folders instead (mask AP / PQ, SQ, RQ):
:mod:`segdemo.evaluate_universal`.

Under ``accelerate launch --num_processes N`` (:mod:`segdemo.distributed`) each process
scores a contiguous share of the sorted images and the statistics are gathered once:
confusion counts summed (semantic), per-image PQ counts or AP records concatenated in
image order (instance/panoptic), so the report equals the one-process report exactly.
The main process prints it and writes ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from segdemo.data import (
    VAL_SPLITS,
    DatasetError,
    check_label_range,
    find_pairs,
    find_val_pairs,
    group_list,
    read_annotation,
    read_id2label,
    select_groups,
)
from segdemo.images import ImageError, load_image
from segdemo.labels import IGNORE_INDEX, to_train_ids
from segdemo.metrics import ConfusionMatrix, MetricInputError
from segdemo.thresholds import DEFAULT_THRESHOLDS
from segdemo.tta import TTA_CHOICES

LABELS_SUFFIX = "_labels.png"
"""``predict`` writes the label map of ``NAME.jpg`` as ``NAME_labels.png``."""


UNIVERSAL_FLAGS = ("threshold", "mask_threshold", "overlap_mask_area_threshold")
"""``args`` attributes that only instance/panoptic evaluation reads."""


class EvaluateError(ValueError):
    """Inputs that cannot be evaluated; the one-line message says what to do."""


Predictor = Callable[[str, Image.Image | None, tuple[int, int]], np.ndarray]
"""``(name, image, (height, width)) -> HxW integer class ids`` at that size."""


# --------------------------------------------------------------------------- scoring


def evaluate_folder(
    data_dir: str | os.PathLike,
    predict: Predictor,
    *,
    split: str = "val",
    reduce_labels: bool = False,
    ignore_index: int | None = None,
    needs_image: bool = True,
    progress: bool = False,
    share: Callable[[list], list] | None = None,
    groups: list[str] | None = None,
) -> tuple[ConfusionMatrix, dict[int, str], int]:
    """Score ``predict`` on every pair of ``data_dir/split``.

    Args:
        data_dir: folder dataset root (see :mod:`segdemo.data`).
        predict: gives the prediction for each sample at the annotation's size.
        split: split folder; ``"val"`` also finds ``validation``.
        groups: instead of ``split``, the pairs of train and val pooled whose group is one of
            these (:func:`segdemo.data.group_of`): the drive ``train/run.py --val-groups``
            held out.
        reduce_labels, ignore_index: raw annotation conventions, see
            :func:`segdemo.labels.to_train_ids`. Raw 255 is always ignored.
        needs_image: ``False`` when ``predict`` does not look at the photo (saved
            predictions): the images are then not decoded.
        progress: show a tqdm bar on stderr (only on a terminal).
        share: picks this process's pairs from the sorted list (e.g.
            :meth:`segdemo.distributed.Workers.split`); the matrix then counts those only.

    Returns:
        ``(confusion matrix, id2label, number of images in the split)``.

    Raises:
        DatasetError / EvaluateError: missing folders, files, mismatched sizes, or
            annotation values that are neither class ids nor ignored.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise EvaluateError(
            f"{root}: data folder not found; pass --data-dir DIR with DIR/{split}/images"
        )
    id2label = read_id2label(root)
    pairs = _pairs_of_groups(root, groups) if groups else _find_split(root, split)
    matrix = ConfusionMatrix(len(id2label), IGNORE_INDEX)
    for pair in _progress(share(pairs) if share else pairs, progress):
        raw = read_annotation(pair.annotation, name=str(pair.annotation))
        ref = to_train_ids(raw, reduce_labels=reduce_labels, ignore_index=ignore_index)
        # as training does: a value that is no class is a labelling mistake, not "no class"
        check_label_range(ref, raw, len(id2label), str(pair.annotation))
        image = _read_image(pair.image) if needs_image else None
        if image is not None and (image.height, image.width) != ref.shape:
            # the model would be scored on a picture its reference does not describe
            raise EvaluateError(
                f"{pair.image}: image is {image.width}x{image.height} but {pair.annotation.name} is "
                f"{ref.shape[1]}x{ref.shape[0]}; annotations must have the image's size"
            )
        pred = np.asarray(predict(pair.name, image, ref.shape))
        if pred.shape != ref.shape:
            raise EvaluateError(
                f"{pair.name}: prediction is {_hw(pred.shape)} but {pair.annotation.name} is {_hw(ref.shape)}; "
                "predict at the annotation's resolution"
            )
        matrix.update(pred, ref)
    return matrix, id2label, len(pairs)


def _find_split(root: Path, split: str) -> list:
    candidates = VAL_SPLITS if split in VAL_SPLITS else (split,)
    for name in candidates:
        pairs = find_pairs(root, name)
        if pairs:
            return pairs
    present = sorted(p.name for p in root.iterdir() if (p / "annotations").is_dir())
    raise EvaluateError(
        f"{root / split}: no images/annotations pairs; choose --split from: {', '.join(present) or 'none found'}"
    )


def _pairs_of_groups(root: Path, groups: list[str]) -> list:
    """The pairs of ``train`` and the val split pooled whose group is in ``groups``."""
    pooled = find_pairs(root, "train")
    pooled += find_val_pairs(root)
    return [pooled[i] for i in select_groups([str(p.image) for p in pooled], groups)]


def parse_groups(args: argparse.Namespace) -> list[str] | None:
    """``--val-groups`` as a list (``None`` when not given; it replaces ``--split``).

    Raises:
        EvaluateError: both ``--val-groups`` and a ``--split`` other than val, or no group.
    """
    if getattr(args, "val_groups", None) is None:
        return None
    groups = group_list(args.val_groups)
    if not groups:
        raise EvaluateError("--val-groups: name at least one group, e.g. --val-groups 0001TP")
    if getattr(args, "split", "val") != "val":
        raise EvaluateError(f"--val-groups scores train and val pooled; drop --split {args.split}")
    return groups


def _read_image(path: Path) -> Image.Image:
    try:
        return load_image(path, name=str(path))
    except ImageError as err:
        raise DatasetError(str(err)) from None


def _hw(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


def _progress(items: list, enabled: bool) -> Iterator:
    if not enabled:
        return iter(items)
    from tqdm.auto import tqdm

    return iter(tqdm(items, desc="evaluate", unit="img", disable=None, file=sys.stderr))


def model_predictor(
    model_id: str, max_size: int | None = None, tta: str | None = None
) -> tuple[Predictor, dict[int, str]]:
    """A :data:`Predictor` running ``model_id`` (semantic task) and the model's ``id2label``.

    The photo is resized to the annotation's size first (if they differ), so the
    logits are upsampled to, and the argmax taken at, the reference resolution.
    """
    from transformers.utils import logging as hf_logging

    from segdemo.models import load_model
    from segdemo.segment import segment

    # transformers' progress bars and advisories would bury the table and the error lines
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # the caller is the operator (the command line): checkpoint folders and hub ids load too
    loaded = load_model(model_id, allow_any=True)

    def predict(name: str, image: Image.Image | None, size: tuple[int, int]) -> np.ndarray:
        if image is None:
            raise EvaluateError(f"{name}: no image to run the model on")
        if (image.height, image.width) != tuple(size):
            image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        return segment(loaded, image, "semantic", max_size=max_size, tta=tta).label_map

    return predict, loaded.id2label


def saved_predictor(pred_dir: str | os.PathLike) -> Predictor:
    """A :data:`Predictor` reading ``pred_dir/NAME_labels.png`` (as written by ``predict``)."""
    folder = Path(pred_dir)
    if not folder.is_dir():
        raise EvaluateError(
            f"{folder}: prediction folder not found; pass the --out DIR of `predict`"
        )

    def predict(name: str, image: Image.Image | None, size: tuple[int, int]) -> np.ndarray:
        path = folder / f"{name}{LABELS_SUFFIX}"
        if not path.is_file():
            raise EvaluateError(
                f"{path}: missing prediction; run `python -m segdemo predict` on the split's images with --out {folder}"
            )
        try:
            return read_annotation(path)
        except DatasetError as err:
            raise EvaluateError(str(err)) from None

    return predict


# --------------------------------------------------------------------------- report


def build_report(metrics: dict, id2label: dict[int, str], evaluation: dict) -> dict:
    """JSON-ready report (:func:`segdemo.metrics.metrics_report`) plus what was evaluated."""
    from segdemo.metrics import metrics_report

    return {**metrics_report(metrics, id2label), "evaluation": evaluation}


def format_table(report: dict) -> str:
    """Per-class IoU / accuracy and the three summary numbers as fixed-width text."""

    def pct(value: float | None) -> str:
        return "   -  " if value is None else f"{100 * value:6.2f}"

    names = list(report["per_category_iou"])
    width = max([len("class"), *(len(n) for n in names)])
    lines = [f"{'class':<{width}}   IoU %   Acc %"]
    for name in names:
        lines.append(
            f"{name:<{width}}  {pct(report['per_category_iou'][name])}  {pct(report['per_category_accuracy'][name])}"
        )
    lines.append("-" * len(lines[0]))
    lines.append(
        f"mIoU {pct(report['mean_iou']).strip()}  mAcc {pct(report['mean_accuracy']).strip()}  "
        f"aAcc {pct(report['overall_accuracy']).strip()}  ({report['evaluation']['num_images']} images)"
    )
    return "\n".join(lines)


def write_json(report: dict, out: str | os.PathLike) -> Path:
    """Write ``report`` (strict JSON: no NaN) to ``out``, creating parent folders."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


# --------------------------------------------------------------------------- CLI


def add_evaluate_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``evaluate`` on the ``python -m segdemo`` subparsers (sets ``run``)."""
    parser = subparsers.add_parser(
        "evaluate",
        help="mIoU of a model (or of saved predictions) on a folder dataset",
        description=__doc__.split("\n\n")[0],
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--model", help="model id from `python -m segdemo models`, or a checkpoint folder"
    )
    what.add_argument(
        "--pred-dir", help="folder of NAME_labels.png written by `python -m segdemo predict`"
    )
    parser.add_argument(
        "--data-dir", required=True, help="DIR with SPLIT/images, SPLIT/annotations, id2label.json"
    )
    parser.add_argument("--split", default="val", help="split folder to score (default: val)")
    parser.add_argument(
        "--val-groups",
        default=None,
        help="score the images of these groups (comma list, e.g. 0001TP) from train and val "
        "pooled instead of --split: the held-out drive of `train/run.py --val-groups` "
        "(a group: the file name up to its first _)",
    )
    parser.add_argument(
        "--reduce-labels",
        action="store_true",
        help="ADE20K convention: raw 0 is ignored and raw v is class v-1",
    )
    parser.add_argument(
        "--ignore-index",
        type=int,
        default=None,
        help="raw annotation value meaning void, e.g. 11 for CamVid (255 is always ignored)",
    )
    parser.add_argument("--out", required=True, help="where to write the metrics JSON")
    parser.add_argument(
        "--max-size", type=int, default=None, help="cap on the model input's longest side"
    )
    parser.add_argument(
        "--tta",
        choices=TTA_CHOICES,
        default=None,
        help="semantic --model: test-time augmentation, as `predict --tta`",
    )
    parser.add_argument(
        "--task",
        choices=("semantic", "instance", "panoptic"),
        default="semantic",
        help="semantic: mIoU on DIR/SPLIT/annotations; panoptic: PQ, instance: COCO mask AP "
        "on a COCO folder (DIR/val/panoptic.json or instances.json)",
    )
    for flag, default in (
        ("--threshold", DEFAULT_THRESHOLDS.threshold),
        ("--mask-threshold", DEFAULT_THRESHOLDS.mask_threshold),
        ("--overlap-mask-area-threshold", DEFAULT_THRESHOLDS.overlap_mask_area_threshold),
    ):
        parser.add_argument(
            flag,
            type=float,
            default=None,
            help=f"instance/panoptic --model post-processing (default: the model's, else {default})",
        )
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Evaluate, print the table, write ``--out``. Returns 0, or 2 with a one-line error.

    Distributed (:mod:`segdemo.distributed`): the main process prints, writes and returns
    the code; the others return 0 (a launcher tears the group down on a non-zero exit).
    """
    from segdemo.distributed import workers

    team = workers()  # before any model loads: on GPUs it picks this process's device
    try:
        report = _run(args, team)
    except _expected_errors() as err:
        if not team.is_main:
            return 0
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not team.is_main:
        return 0
    task = getattr(args, "task", "semantic")
    if task == "semantic":
        print(format_table(report))
    else:
        from segdemo.evaluate_universal import format_table as format_universal

        print(format_universal(report, task))
    print(f"wrote {args.out}")
    return 0


def _expected_errors() -> tuple[type[Exception], ...]:
    """Bad input or environment (one-line messages); anything else is a bug and keeps its traceback."""
    from segdemo.errors import SegdemoError

    # EvaluateError and DatasetError go once they derive from SegdemoError
    return (SegdemoError, EvaluateError, DatasetError, OSError)


def _run(args: argparse.Namespace, team=None) -> dict:
    from segdemo.distributed import Workers

    team = team or Workers()
    if getattr(args, "tta", None) is not None and (
        getattr(args, "task", "semantic") != "semantic" or args.model is None
    ):
        raise EvaluateError(f"--tta {args.tta} applies to --task semantic with --model")
    if getattr(args, "task", "semantic") != "semantic":
        from segdemo.evaluate_universal import run_universal

        return run_universal(args, team)
    if any(getattr(args, k, None) is not None for k in UNIVERSAL_FLAGS):
        raise EvaluateError(
            "--threshold, --mask-threshold and --overlap-mask-area-threshold apply to "
            "--task instance|panoptic"
        )
    root = Path(args.data_dir)
    if not root.is_dir():
        raise EvaluateError(
            f"{root}: data folder not found; pass --data-dir DIR with DIR/{args.split}/images"
        )
    data_labels = read_id2label(root)  # fail on the dataset before spending time on a model
    groups = parse_groups(args)
    if groups:  # the same check on every process, before a model loads
        _pairs_of_groups(root, groups)
    if args.pred_dir is not None:
        predict, needs_image = saved_predictor(args.pred_dir), False
        source = {"pred_dir": str(args.pred_dir)}
    else:
        predict, model_labels = load_in_turn(
            team, lambda: model_predictor(args.model, args.max_size, args.tta)
        )
        if len(model_labels) != len(data_labels):
            raise EvaluateError(
                f"{args.model} predicts {len(model_labels)} classes but {root / 'id2label.json'} has "
                f"{len(data_labels)}; evaluate a model trained on this dataset's classes"
            )
        needs_image = True
        source = {"model": args.model, "max_size": args.max_size, "tta": args.tta}
    matrix, id2label, count = gather_outcome(
        team,
        lambda: evaluate_folder(
            root,
            predict,
            split=args.split,
            reduce_labels=args.reduce_labels,
            ignore_index=args.ignore_index,
            needs_image=needs_image,
            progress=team.is_main,
            share=team.split,
            groups=groups,
        ),
    )
    if team.count > 1:  # integer counts: the sum is the one-process matrix exactly
        totals = team.gather(matrix.counts)
        matrix = ConfusionMatrix.from_counts(sum(totals[1:], totals[0]), IGNORE_INDEX)
    evaluation = source | {
        "data_dir": str(root),
        "split": args.split if groups is None else "train+val",
        "val_groups": groups,
        "num_images": count,
        "num_labels": len(id2label),
        "reduce_labels": bool(args.reduce_labels),
        "ignore_index": args.ignore_index,
    }
    report = build_report(matrix.compute(), id2label, evaluation)
    if team.is_main:
        write_json(report, args.out)
    return report


def load_in_turn(team, load: Callable[[], Any]) -> Any:
    """``load()`` on the main process first (a hub model downloads once), then on the
    others; a failure on any process is raised on all of them (:func:`gather_outcome`)."""

    def in_turn() -> Any:
        with team.main_first():
            return load()

    return gather_outcome(team, in_turn)


def gather_outcome(team, work: Callable[[], Any]) -> Any:
    """``work()`` on every process; if any process fails, all raise the first failure.

    A process that stopped on a bad file would otherwise leave the others waiting for
    its statistics. Failures are compared in rank order, which is image order.
    """
    if team.count == 1:
        return work()
    try:
        value, failure = work(), None
    except _expected_errors() as err:
        value, failure = None, str(err)
    first = next((f for f in team.gather(failure) if f is not None), None)
    if first is not None:
        raise EvaluateError(first)
    return value


__all__ = [
    "EvaluateError",
    "MetricInputError",
    "add_evaluate_command",
    "build_report",
    "evaluate_folder",
    "format_table",
    "model_predictor",
    "saved_predictor",
]
