"""``python -m segdemo predict`` and ``python -m segdemo models``.

    python -m segdemo predict photo.jpg more/*.png --model local/segdemo-camvid --task semantic --out out/
    python -m segdemo predict photo.jpg --model ./runs/mine --task panoptic --out out/
    python -m segdemo predict photos/ --recursive --batch-size 8 --skip-existing ... --out out/
    accelerate launch --multi_gpu --num_processes 4 -m segdemo predict photos/ ... --out out/
    python -m segdemo models

``IMAGE`` arguments are files, folders (their images, sorted; ``--recursive`` for
subfolders) or glob patterns (quoted, ``"photos/**/*.jpg"``): :mod:`segdemo.inputs`.
A folder's images keep their relative path under ``--out`` (``photos/a/x.jpg`` ->
``out/a/x_labels.png``). ``--batch-size`` runs images of one input shape through the model
together (:mod:`segdemo.batch`). Under ``accelerate launch`` the processes split the
sorted list (:mod:`segdemo.distributed`): each image is done once, by one process.
``--skip-existing`` leaves out images whose three files exist (files are written
atomically, so a killed run can be re-run to finish).

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

A bad image (unreadable, not an image, a symlink loop...) is reported on stderr in one
line naming the file; the other images are still processed and the exit code is 1 (that
of the main process in a distributed run; the others exit 0). Arguments that give no
image at all are an error.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segdemo.errors import SegdemoError
from segdemo.result import Task
from segdemo.thresholds import DEFAULT_THRESHOLDS, Thresholds
from segdemo.tta import TTA_CHOICES


def add_predict_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``predict``; its ``run`` returns the exit code."""
    parser = subparsers.add_parser(
        "predict",
        help="segment images and write overlay, label map and segment list",
        description="Segment images; writes NAME_overlay.png, NAME_labels.png and NAME_segments.json.",
    )
    parser.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE",
        help="image files, folders (their images, sorted) or glob patterns such as 'photos/*.jpg'",
    )
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
    parser.add_argument(
        "--tta",
        choices=TTA_CHOICES,
        default=None,
        help="semantic test-time augmentation: flip averages the image's and its mirror "
        "image's class scores (2 passes), multiscale also at 1.25x and 1.5x the input size "
        "(6 passes); default off: the pipeline's result",
    )
    parser.add_argument(
        "--recursive", action="store_true", help="also take the images in subfolders of folders"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="images of one input size per forward pass (1); same label maps as 1",
    )
    parser.add_argument(
        "--skip-existing",
        action="store_true",
        help="leave out images whose output files all exist (finish a killed run)",
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
    """Segment every image (this process's share of them); 0 when all succeeded, 1 otherwise."""
    from segdemo.distributed import workers

    _quiet_transformers()
    if args.max_size is not None and args.max_size < 32:
        _error(f"--max-size {args.max_size} is too small; use at least 32")
        return 1
    if args.batch_size < 1:
        _error(f"--batch-size {args.batch_size} must be at least 1")
        return 1
    if args.tta is not None and (args.batch_size > 1 or args.task != "semantic"):
        _error(
            f"--tta {args.tta} runs one image at a time on the semantic task; drop --batch-size or --tta"
        )
        return 1
    team = workers()  # before the model: on GPUs it picks this process's device
    with team.main_first():  # one process downloads a hub model, then the others read it
        setup = _prepare(args)
    # the same arguments and files give every process the same answer; print it once
    first_error = next((e for e in team.gather(setup.error) if e is not None), None)
    if first_error is not None:
        if team.is_main:
            _error(first_error)
        return _exit_code(1, team)
    if team.is_main:
        for problem in setup.found.problems:
            _error(problem)
    mine = team.split(setup.found.images)
    counts = _predict_share(args, setup, mine, team.is_main)
    totals = [sum(column) for column in zip(*team.gather(counts), strict=True)]
    written, failed, already = totals
    failed += len(setup.found.problems)
    if team.is_main and (team.count > 1 or setup.found.expanded or already):
        _summary(written, failed, already, len(setup.found.skipped), team.count)
    return _exit_code(1 if failed else 0, team)


def _exit_code(code: int, team) -> int:
    """The run's code from the main process; 0 from the others, whose failures it counted.

    A launcher tears the group down when a process exits non-zero, and a second failing
    process would only repeat the main one's report.
    """
    return code if team.is_main else 0


@dataclass
class _Setup:
    """What every process of ``predict`` prepares before splitting the images."""

    error: str | None = None
    loaded: Any = None
    task: Task | None = None
    thresholds: Thresholds | None = None
    palette: np.ndarray | None = None
    found: Any = None


def _prepare(args: argparse.Namespace) -> _Setup:
    """Load the model and list the images; ``error`` holds the one-line reason when not."""
    from segdemo import palettes
    from segdemo.inputs import expand_inputs
    from segdemo.models import load_model

    try:
        # the person at the command line is the operator: folders and hub ids are allowed
        loaded = load_model(args.model, allow_any=True)
        task = loaded.check_task(args.task)
        found = expand_inputs(args.images, recursive=args.recursive, exclude=args.out)
    except SegdemoError as err:
        return _Setup(error=str(err))
    thresholds = thresholds_from_args(args, loaded.spec.thresholds())
    palette = palettes.palette_for(loaded.spec.palette, loaded.id2label)
    return _Setup(None, loaded, task, thresholds, palette, found)


def _predict_share(args: argparse.Namespace, setup: _Setup, mine: list, show_bar: bool) -> tuple:
    """Segment ``mine`` and write their files; ``(written, failed, already done)``."""
    from tqdm.auto import tqdm

    from segdemo.batch import segment_stream
    from segdemo.images import load_image
    from segdemo.render import render
    from segdemo.result_files import write_result_files

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    already = 0
    if args.skip_existing:
        todo = [item for item in mine if not _complete(out, item.name)]
        already = len(mine) - len(todo)
        mine = todo
    # a bar on the terminal for runs of several images; the per-image lines print above it
    bar = tqdm(
        total=len(mine),
        desc="predict",
        unit="img",
        file=sys.stderr,
        disable=None if show_bar and len(mine) > 1 else True,
    )
    written = failed = 0
    stream = segment_stream(
        setup.loaded,
        mine,
        lambda item: load_image(item.path, name=item.label),
        setup.task,
        batch_size=args.batch_size,
        **setup.thresholds.as_kwargs(),
        max_size=args.max_size,
        tta=args.tta,
    )
    for done in stream:
        bar.update(1)
        item = done.item
        if done.error is not None:
            _write_line(f"error: {_failure_message(item.label, done.error)}", sys.stderr)
            failed += 1
            continue
        folder = out / Path(item.name).parent
        folder.mkdir(parents=True, exist_ok=True)
        name = Path(item.name).name
        overlay = render(np.asarray(done.image), done.result, setup.palette, alpha=args.alpha)
        write_result_files(
            folder,
            name,
            done.result,
            model_id=setup.loaded.spec.id,
            image_name=item.path.name,
            overlay=overlay,
        )
        written += 1
        segments = len(done.result.segments)
        _write_line(f"{item.path}: {segments} segments -> {folder / name}_*.png", sys.stdout)
    bar.close()
    # before the processes meet again: a launcher may end the others once the main one exits
    sys.stdout.flush()
    sys.stderr.flush()
    return written, failed, already


def _write_line(text: str, stream) -> None:
    """``text`` and its newline in one write, flushed, above any progress bar.

    Processes of one launch share stdout and stderr: a line written whole stays whole
    (a pipe keeps writes up to 4 KiB in one piece) instead of interleaving mid-line.
    """
    from tqdm.auto import tqdm

    tqdm.write(text + "\n", file=stream, end="")
    stream.flush()


def _failure_message(label: str, err: Exception) -> str:
    """One line naming the image: the reader's own message, or why segmentation failed."""
    if isinstance(err, SegdemoError):
        return str(err)
    if isinstance(err, OSError):  # e.g. no permission to read it
        return f"{label}: cannot read it ({err.strerror or err}); check its permissions"
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return f"{label}: segmentation failed ({reason})"  # e.g. an image the processor cannot resize


def _complete(out: Path, name: str) -> bool:
    """Whether ``--skip-existing`` may leave ``name`` out: all three of its files exist."""
    from segdemo.result_files import LABELS_SUFFIX, OVERLAY_SUFFIX, SEGMENTS_SUFFIX

    return all(
        (out / f"{name}{suffix}").is_file()
        for suffix in (LABELS_SUFFIX, SEGMENTS_SUFFIX, OVERLAY_SUFFIX)
    )


def _summary(written: int, failed: int, already: int, not_images: int, processes: int) -> None:
    parts = [f"{written} written", f"{failed} failed"]
    if already:
        parts.append(f"{already} already done (--skip-existing)")
    if not_images:
        files = "file" if not_images == 1 else "files"
        parts.append(f"{not_images} {files} in the folders not images by name, left out")
    if processes > 1:
        parts.append(f"{processes} processes")
    print(f"predict: {', '.join(parts)}", file=sys.stderr)


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
