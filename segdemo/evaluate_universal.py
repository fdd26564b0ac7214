"""``python -m segdemo evaluate --task instance|panoptic``: PQ or mask AP on a COCO folder.

    python -m segdemo evaluate --task panoptic --model runs/pan --data-dir DIR --out pq.json
    python -m segdemo evaluate --task instance --pred-dir out/ --data-dir DIR --out ap.json

Ground truth is the val split of :func:`segdemo.coco.load_universal` (a COCO panoptic
folder; for instance also a COCO instances JSON). Each image is scored at its
annotation's resolution by the code training uses: :func:`score_image` (PQ counts of
:mod:`segdemo.panoptic_quality`, or an RLE record of :mod:`segdemo.mask_ap`) and
:func:`summarize`.

Predictions come from

* ``--model``: :func:`segdemo.segment.segment` per image, with the model's recommended
  thresholds (its ``segdemo.json``; else :data:`segdemo.thresholds.DEFAULT_THRESHOLDS`),
  each flag overriding one, as ``predict`` does. Panoptic fuses the model's stuff
  classes (``label_ids_to_fuse``): the classes not in its thing list, taken from the
  checkpoint's ``segdemo.json`` ``thing_ids`` (written by ``train/run.py``), else the
  image processor's ``metadata["thing_ids"]`` (hub checkpoints), else the dataset's
  ``isthing`` (the model's classes equal the dataset's, checked first);
* ``--pred-dir``: ``predict``'s files (:mod:`segdemo.result_files`):
  ``NAME_labels.png`` (segment ids, 8- or 16-bit, 0 = none) and ``NAME_segments.json``
  (``segments[]`` with ``id``, ``label``, ``label_id``, ``score``).

The model's (or the saved segments') class ids and names must be the dataset's.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from segdemo.coco import Target, UniversalSplits, load_universal
from segdemo.data import VAL_SPLITS, DatasetError, groups_as_val, read_annotation
from segdemo.mask_ap import STATS, image_record, mask_ap, masks_from_label_map
from segdemo.panoptic_quality import panoptic_counts, pq_from_counts
from segdemo.thresholds import Thresholds

TASKS = ("instance", "panoptic")

Segments = list[tuple[int, int, float | None]]
"""``[(segment id, class id, score)]`` of one predicted image."""

Predictor = Callable[[str, Image.Image, tuple[int, int]], tuple[np.ndarray, Segments]]
"""``(name, image, (height, width)) -> (HxW int segment ids, 0 = none; segments)``."""


def _error(message: str) -> Exception:
    from segdemo.evaluate import EvaluateError  # evaluate.py imports this module lazily

    return EvaluateError(message)


# --------------------------------------------------------------------------- scoring


def score_image(
    task: str,
    target: Target,
    label_map: np.ndarray,
    segments: Segments,
    num_classes: int,
    key: int | str,
) -> np.ndarray | dict:
    """Score one image; training and ``evaluate`` share it.

    Args:
        task: ``"panoptic"`` or ``"instance"``.
        target: the ground truth (:class:`segdemo.coco.Target`, ``(N, H, W)`` masks).
        label_map: ``HxW`` predicted segment ids at the target's size, 0 = none.
        segments: ``[(segment id, class id, score)]``; every non-zero id of ``label_map``.
        num_classes: the model's number of classes.
        key: the image's unique key (index or file name) for AP deduplication.

    Returns:
        panoptic: ``(num_classes, 4)`` float64 PQ counts (sum them over images);
        instance: a :func:`segdemo.mask_ap.image_record` (collect them, then
        :func:`summarize`).

    Raises:
        ValueError: sizes that differ, or ids / classes that do not fit (one line).
    """
    if task == "panoptic":
        gt_map, gt_segments = target.panoptic_map()
        pred_segments = {int(s): int(c) for s, c, _ in segments}
        return panoptic_counts(label_map, pred_segments, gt_map, gt_segments, num_classes)
    if any(score is None for _, _, score in segments):
        raise ValueError("a predicted segment has no score; mask AP ranks by score")
    return image_record(
        key,
        target.masks,
        target.class_ids,
        target.iscrowd,
        masks_from_label_map(label_map, [s for s, _, _ in segments]),
        [c for _, c, _ in segments],
        [score for _, _, score in segments],
    )


def summarize(
    task: str, scores: Sequence, id2label: Mapping[int, str], thing_ids: Iterable[int]
) -> dict:
    """The report of :func:`score_image` results: :func:`~segdemo.panoptic_quality.pq_from_counts`
    of the summed counts (panoptic) or :func:`~segdemo.mask_ap.mask_ap` of the records."""
    if task == "panoptic":
        total = np.zeros((len(id2label), 4), np.float64)
        for counts in scores:
            total += counts
        return pq_from_counts(total, id2label, thing_ids)
    return mask_ap(list(scores), id2label)


def evaluate_universal(
    task: str,
    splits: UniversalSplits,
    predict: Predictor,
    *,
    split: str = "val",
    progress: bool = False,
    team: Any = None,
) -> tuple[dict, int]:
    """Score ``predict`` on every image of ``splits.<split>``; returns ``(report, images)``.

    Args:
        team: :class:`segdemo.distributed.Workers`: this process scores its contiguous
            share; the per-image scores of all processes are gathered in image order (each
            image once), so sums and rankings are the one-process ones exactly.

    Raises:
        EvaluateError / DatasetError: one line naming the image or file.
    """
    from segdemo.distributed import Workers
    from segdemo.evaluate import gather_outcome

    team = team or Workers()
    source = splits.val if split in VAL_SPLITS else splits.train
    mine = team.split(list(range(len(source))))
    scored = gather_outcome(
        team, lambda: _score_images(task, source, predict, len(splits.id2label), mine, progress)
    )
    if team.count > 1:
        by_index = {index: score for part in team.gather(scored) for index, score in part}
        scored = sorted(by_index.items())
    scores = [score for _, score in scored]
    return summarize(task, scores, splits.id2label, splits.thing_ids), len(source)


def _score_images(
    task: str, source: Any, predict: Predictor, num_classes: int, indices: list[int], progress: bool
) -> list[tuple[int, Any]]:
    """``[(index, score_image(...))]`` for ``indices`` of ``source``."""
    from segdemo.evaluate import _progress

    scores = []
    for index in _progress(indices, progress):
        image, target = source[index]
        name = source.key(index)
        size = tuple(target.masks.shape[1:])
        label_map, segments = predict(name, image, size)
        label_map = np.asarray(label_map)
        if label_map.shape != size:
            raise _error(
                f"{name}: prediction is {_hw(label_map.shape)} but the annotation is {_hw(size)}; "
                "predict at the annotation's resolution"
            )
        try:
            scores.append(
                (index, score_image(task, target, label_map, segments, num_classes, name))
            )
        except ValueError as err:
            raise _error(f"{name}: {err}") from None
    return scores


def _hw(shape: Sequence[int]) -> str:
    return "x".join(str(s) for s in shape)


# --------------------------------------------------------------------------- predictions


def check_classes(labels: Mapping[int, str], data_labels: Mapping[int, str], what: str) -> None:
    """EvaluateError unless ``labels`` has the dataset's class ids and names."""
    if len(labels) != len(data_labels):
        raise _error(
            f"{what} predicts {len(labels)} classes but the dataset has {len(data_labels)}; "
            "evaluate a model trained on this dataset's classes"
        )
    for class_id in sorted(data_labels):
        if labels.get(class_id) != data_labels[class_id]:
            raise _error(
                f"{what}: class {class_id} is {labels.get(class_id)!r} but the dataset's is "
                f"{data_labels[class_id]!r}; evaluate a model trained on this dataset's classes"
            )


def model_thing_ids(loaded) -> tuple[set[int] | None, str | None]:
    """The model's thing classes and where they were read (see the module docstring)."""
    from segdemo.registry import SPEC_FILE
    from segdemo.segment import _thing_ids

    folder = getattr(loaded.spec, "path", None)
    if folder is not None and (Path(folder) / SPEC_FILE).is_file():
        try:
            spec = json.loads((Path(folder) / SPEC_FILE).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise _error(f"{Path(folder) / SPEC_FILE}: not valid JSON ({err})") from None
        if isinstance(spec, dict) and "thing_ids" in spec:
            try:
                return {int(i) for i in spec["thing_ids"]}, SPEC_FILE
            except (TypeError, ValueError):
                raise _error(
                    f"{Path(folder) / SPEC_FILE}: thing_ids must be a list of class ids"
                ) from None
    metadata_things = _thing_ids(loaded)
    if metadata_things is not None:
        return metadata_things, "processor metadata"
    return None, None


def model_predictor(
    model_id: str,
    task: str,
    splits: UniversalSplits,
    *,
    flags: Mapping[str, float | None],
    max_size: int | None = None,
) -> tuple[Predictor, dict]:
    """A :data:`Predictor` running ``model_id`` and what it ran with (for the report).

    Args:
        flags: ``threshold``, ``mask_threshold``, ``overlap_mask_area_threshold`` given on
            the command line (``None``: the model's recommendation or the default).
    """
    from transformers.utils import logging as hf_logging

    from segdemo.models import load_model
    from segdemo.segment import segment

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    loaded = load_model(model_id, allow_any=True)  # the command line is the operator
    loaded.check_task(task)
    check_classes(loaded.id2label, splits.id2label, model_id)
    thresholds = Thresholds.from_mapping(
        {k: v for k, v in flags.items() if v is not None}, loaded.spec.thresholds()
    )
    fuse = None
    things, things_from = model_thing_ids(loaded)
    if task == "panoptic":
        if things is None:
            things, things_from = set(splits.thing_ids), "dataset"
        fuse = set(loaded.id2label) - things

    def predict(
        name: str, image: Image.Image, size: tuple[int, int]
    ) -> tuple[np.ndarray, Segments]:
        if (image.height, image.width) != tuple(size):
            raise _error(
                f"{name}: image is {image.width}x{image.height} but its annotation is "
                f"{size[1]}x{size[0]}; they must have the same size"
            )
        result = segment(
            loaded, image, task, **thresholds.as_kwargs(), label_ids_to_fuse=fuse, max_size=max_size
        )
        return result.label_map, [(s.id, s.label_id, s.score) for s in result.segments]

    source = {"model": model_id, "max_size": max_size, "thresholds": thresholds.as_kwargs()}
    if task == "panoptic":
        source |= {"label_ids_to_fuse": sorted(fuse), "thing_ids_from": things_from}
    return predict, source


def saved_predictor(
    pred_dir: str | os.PathLike, task: str, id2label: Mapping[int, str]
) -> Predictor:
    """A :data:`Predictor` reading ``predict``'s ``NAME_labels.png`` + ``NAME_segments.json``."""
    from segdemo.result_files import LABELS_SUFFIX, SEGMENTS_SUFFIX

    folder = Path(pred_dir)
    if not folder.is_dir():
        raise _error(f"{folder}: prediction folder not found; pass the --out DIR of `predict`")

    def predict(
        name: str, image: Image.Image, size: tuple[int, int]
    ) -> tuple[np.ndarray, Segments]:
        labels, listing = folder / f"{name}{LABELS_SUFFIX}", folder / f"{name}{SEGMENTS_SUFFIX}"
        for path in (labels, listing):
            if not path.is_file():
                raise _error(
                    f"{path}: missing prediction; run `python -m segdemo predict --task {task}` "
                    f"on the split's images with --out {folder}"
                )
        try:
            label_map = read_annotation(labels)
        except DatasetError as err:
            raise _error(str(err)) from None
        return label_map, _read_segments(listing, task, id2label)

    return predict


def _read_segments(path: Path, task: str, id2label: Mapping[int, str]) -> Segments:
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _error(
            f"{path}: cannot read it ({err}); re-run `python -m segdemo predict`"
        ) from None
    if isinstance(summary, dict) and summary.get("task", task) != task:
        raise _error(
            f"{path}: predictions are {summary['task']}; run `python -m segdemo predict --task {task}`"
        )
    try:
        rows = summary["segments"]
        segments = [(int(r["id"]), int(r["label_id"]), r.get("score")) for r in rows]
        names = [r.get("label") for r in rows]
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise _error(
            f"{path}: expected segments[] with id, label_id and score ({type(err).__name__}: {err})"
        ) from None
    for (segment_id, class_id, _), name in zip(segments, names, strict=True):
        if class_id not in id2label or (name is not None and name != id2label[class_id]):
            raise _error(
                f"{path}: segment {segment_id} is {name!r} (label_id {class_id}) but the dataset's "
                f"class {class_id} is {id2label.get(class_id)!r}; predict with a model trained on "
                "this dataset's classes"
            )
    return segments


# --------------------------------------------------------------------------- report


def format_table(report: dict, task: str) -> str:
    """Per-class PQ / SQ / RQ (panoptic) or AP (instance) and the summary as fixed-width text."""

    def pct(value: float | None) -> str:
        return "   -  " if value is None else f"{100 * value:6.2f}"

    images = report["evaluation"]["num_images"]
    names = list(report["per_category"])
    width = max([len("class"), *(len(n) for n in names)])
    if task == "panoptic":
        lines = [f"{'class':<{width}}    PQ %    SQ %    RQ %     TP     FP     FN  kind"]
        for name, row in report["per_category"].items():
            kind = "thing" if row["isthing"] else "stuff"
            lines.append(
                f"{name:<{width}}  {pct(row['pq'])}  {pct(row['sq'])}  {pct(row['rq'])}  "
                f"{row['tp']:5d}  {row['fp']:5d}  {row['fn']:5d}  {kind}"
            )
        lines.append("-" * len(lines[0]))
        for label, suffix in (("all", ""), ("things", "_things"), ("stuff", "_stuff")):
            lines.append(
                f"{label:<6}  PQ {pct(report['pq' + suffix]).strip()}  "
                f"SQ {pct(report['sq' + suffix]).strip()}  RQ {pct(report['rq' + suffix]).strip()}"
            )
        lines.append(f"({images} images, {report['num_categories']} categories in the means)")
        return "\n".join(lines)
    lines = [f"{'class':<{width}}    AP %"]
    lines += [f"{name:<{width}}  {pct(ap)}" for name, ap in report["per_category"].items()]
    lines.append("-" * max(len(lines[0]), 20))
    titles = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    lines.append(
        "  ".join(f"{t} {pct(report[k]).strip()}" for t, k in zip(titles, STATS, strict=True))
        + f"  ({images} images)"
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


def run_universal(args: argparse.Namespace, team: Any = None) -> dict:
    """``evaluate --task instance|panoptic``: score, build the report, write ``--out`` (the
    main process of ``team``, a :class:`segdemo.distributed.Workers`)."""
    from segdemo.distributed import Workers
    from segdemo.evaluate import load_in_turn, parse_groups, write_json

    team = team or Workers()
    task = args.task
    if args.reduce_labels or args.ignore_index is not None:
        raise _error(
            "--reduce-labels and --ignore-index apply to --task semantic; COCO folders mark "
            "void with segment id 0"
        )
    if args.split not in ("train", *VAL_SPLITS):
        raise _error(f"--split {args.split}: COCO folders have train and val; choose one")
    root = Path(args.data_dir)
    if not root.is_dir():
        raise _error(
            f"{root}: data folder not found; pass --data-dir DIR with DIR/val/panoptic.json"
        )
    splits = load_universal(task, data_dir=root)  # the dataset fails before a model loads
    groups = parse_groups(args)
    if groups:
        splits = groups_as_val(splits, groups)
    flags = {
        "threshold": args.threshold,
        "mask_threshold": args.mask_threshold,
        "overlap_mask_area_threshold": args.overlap_mask_area_threshold,
    }
    if args.pred_dir is not None:
        if any(v is not None for v in flags.values()) or args.max_size is not None:
            raise _error(
                "--threshold, --mask-threshold, --overlap-mask-area-threshold and --max-size "
                "apply to --model; saved predictions are scored as they are"
            )
        predict = saved_predictor(args.pred_dir, task, splits.id2label)
        source: dict = {"pred_dir": str(args.pred_dir)}
    else:
        predict, source = load_in_turn(
            team,
            lambda: model_predictor(args.model, task, splits, flags=flags, max_size=args.max_size),
        )
    report, count = evaluate_universal(
        task, splits, predict, split=args.split, progress=team.is_main, team=team
    )
    report["evaluation"] = source | {
        "task": task,
        "data_dir": str(root),
        "split": args.split if groups is None else "train+val",
        "val_groups": groups,
        "val_carved": bool(splits.val_carved) and args.split in VAL_SPLITS,
        "num_images": count,
        "num_labels": len(splits.id2label),
        "thing_ids": sorted(splits.thing_ids),
    }
    if team.is_main:
        write_json(report, args.out)
    return report


__all__ = [
    "Predictor",
    "Segments",
    "check_classes",
    "evaluate_universal",
    "format_table",
    "model_predictor",
    "model_thing_ids",
    "run_universal",
    "saved_predictor",
    "score_image",
    "summarize",
]
