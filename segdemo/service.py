"""Request handlers behind the app and its API, with no gradio in sight.

``app.py`` turns widgets into calls of :func:`run_task` / :func:`run_compare` and
their outputs back into widgets; everything a request does (validate the model id,
read the upload, load the model, segment, render, write the downloads) happens
here, so it is testable without a server.

Errors meant for the person on the other end derive from
:class:`segdemo.errors.SegdemoError` and their ``str()`` is a one-line message; anything
else is a bug.

Which models a caller may pick is the operator's choice: the registry's ids, or any
checkpoint folder and hub id when the app runs with ``SEGDEMO_ALLOW_ANY_MODEL=1`` (read
per request, :func:`allow_any_model`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from segdemo import hub, palettes, registry, render
from segdemo.errors import SegdemoError
from segdemo.images import load_image
from segdemo.models import ModelLoadError, load_model
from segdemo.registry import ModelNotAllowedError, ModelSpec, UnsupportedTaskError
from segdemo.result import SegmentationResult, Task, region_stats
from segdemo.result_files import write_result_files
from segdemo.segment import segment
from segdemo.thresholds import DEFAULT_THRESHOLDS, Thresholds
from segdemo.tta import TTA_CHOICES, TTA_MODES

DISPLAY_MAX_SIDE = 1024
"""Longest side of the pictures sent back for display (annotated image, overlay).
Downloads (label map, JSON) stay at the upload's full resolution; a 50 MP overlay
plus one full-size mask PNG per segment would be slow to encode and to ship."""

TABLE_COLUMNS = ("label", "score", "area %")

Progress = Callable[[float, str], None]
"""``progress(fraction in [0, 1], description)``; ``app.py`` adapts ``gr.Progress``."""


class RequestError(SegdemoError):
    """A request the service cannot serve as given (missing image, bad option value)."""


USER_ERRORS: tuple[type[Exception], ...] = (SegdemoError,)
"""Exceptions whose message is written for the user; ``app.py`` shows them as ``gr.Error``."""

_MODEL_ERRORS = (ModelNotAllowedError, ModelLoadError, UnsupportedTaskError)


@dataclass(frozen=True)
class Options:
    """Per-request settings.

    Attributes:
        threshold: instance/panoptic: minimum segment score, in ``[0, 1]``.
        mask_threshold: instance/panoptic: mask probability cut-off, in ``[0, 1]``.
        overlap_mask_area_threshold: instance/panoptic: minimum share of a mask that
            must survive overlaps for the segment to be kept, in ``[0, 1]``.
        alpha: opacity of the colour overlay, in ``[0, 1]``.
        tta: semantic test-time augmentation, ``None`` (off), ``"flip"`` or ``"multiscale"``
            (``segment(..., tta=...)``, :mod:`segdemo.tta`).
    """

    threshold: float = DEFAULT_THRESHOLDS.threshold
    mask_threshold: float = DEFAULT_THRESHOLDS.mask_threshold
    overlap_mask_area_threshold: float = DEFAULT_THRESHOLDS.overlap_mask_area_threshold
    alpha: float = 0.5
    tta: str | None = None

    def __post_init__(self) -> None:
        for name in ("threshold", "mask_threshold", "overlap_mask_area_threshold", "alpha"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
                raise RequestError(f"{name} must be a number between 0 and 1, got {value!r}")
        if self.tta not in TTA_MODES:
            raise RequestError(f"tta must be off, {' or '.join(TTA_CHOICES)}, got {self.tta!r}")

    @property
    def thresholds(self) -> Thresholds:
        """The three thresholds as :class:`segdemo.thresholds.Thresholds`."""
        return Thresholds(self.threshold, self.mask_threshold, self.overlap_mask_area_threshold)

    def with_thresholds(self, thresholds: Thresholds) -> Options:
        """These options with ``thresholds`` in place of the three threshold values."""
        return replace(self, **thresholds.as_kwargs())


@dataclass
class TaskOutput:
    """Everything one task tab shows.

    Attributes:
        task: the task that ran.
        model_id: the model that ran it.
        image: the input at display size, ``hxwx3`` uint8 RGB (longest side at most
            :data:`DISPLAY_MAX_SIDE`).
        annotations: ``[(mask, name)]`` for the annotated image, largest region first,
            one per segment with pixels at display size:
            ``mask`` is ``hxw`` float32, 0.0 outside the segment and ``options.alpha``
            inside (gradio reads the value as opacity, and draws uint8 0/255 masks
            invisibly), ``name`` is unique (instances are numbered: ``"car 2"``).
        color_map: ``{name: "#rrggbb"}`` from the model's palette, one per annotation.
        overlay: ``hxwx3`` uint8 RGB render with contours, labels and legend.
        table: one row per segment with pixels, largest first: ``[name, score or None,
            area % of the image]``. Segments without pixels stay in the JSON only.
        label_map_png: ``TASK_labels.png``, written by :mod:`segdemo.result_files` (the
            CLI's writer): full-resolution class ids for semantic, segment ids for
            instance/panoptic (0 = no segment); 8-bit grey, 16-bit when ids exceed 255.
        segments_json: ``TASK_segments.json``, the same writer's segment list.
        result: the full-resolution result.
    """

    task: Task
    model_id: str
    image: np.ndarray
    annotations: list[tuple[np.ndarray, str]]
    color_map: dict[str, str]
    overlay: np.ndarray
    table: list[list]
    label_map_png: Path
    segments_json: Path
    result: SegmentationResult = field(repr=False)


def allow_any_model() -> bool:
    """The operator's ``SEGDEMO_ALLOW_ANY_MODEL=1``: callers may pick any checkpoint folder
    or hub id, not only the listed models. Read per request."""
    return os.environ.get("SEGDEMO_ALLOW_ANY_MODEL", "").strip().lower() in {"1", "true", "yes"}


def model_choices(task: Task | str) -> list[tuple[str, str]]:
    """``[(title, model_id)]`` for a model dropdown: registry models for ``task`` and
    the local checkpoints found at start-up that support it."""
    return [(spec.title, spec.id) for spec in registry.models_for_task(Task.parse(task))]


def default_model(task: Task | str) -> ModelSpec | None:
    """The model a UI preselects for ``task``.

    On a Space (:func:`segdemo.hub.prefers_hub`): the first curated model for the task.
    Elsewhere: the shipped checkpoint for the task (:data:`segdemo.registry.EMBEDDED_DEFAULTS`:
    the CamVid semantic model for semantic, the CamVid panoptic model for instance and
    panoptic) when present, else the first model available offline, else (unless
    ``HF_HUB_OFFLINE``) the first curated one, else ``None``. Sends no request.
    """
    task = Task.parse(task)
    candidates = registry.models_for_task(task)
    if hub.prefers_hub():
        curated = [s for s in candidates if s.source == "hub"]
        return (curated or candidates or [None])[0]
    embedded = [s for s in candidates if s.id == registry.EMBEDDED_DEFAULTS.get(task)]
    if embedded:
        return embedded[0]
    offline = next((s for s in candidates if hub.is_available_offline(s)), None)
    if offline is not None or hub.offline():
        return offline
    return next((s for s in candidates if s.source == "hub"), None)


def default_model_id(task: Task | str) -> str | None:
    """The model a dropdown starts on, or ``None`` when no model for ``task`` is available."""
    spec = default_model(task)
    return spec.id if spec is not None else None


def start_thresholds(model_id: str | None) -> tuple[Thresholds, bool]:
    """The thresholds a UI starts from for ``model_id``, and whether the model recommends them.

    A model's ``segdemo.json`` may recommend thresholds; otherwise, and for an empty or
    unknown id, :data:`segdemo.thresholds.DEFAULT_THRESHOLDS`. Loads nothing.
    """
    if not model_id:
        return DEFAULT_THRESHOLDS, False
    try:
        spec = registry.get_spec(model_id, allow_any=allow_any_model())
    except SegdemoError:  # the request itself will say what is wrong with the id
        return DEFAULT_THRESHOLDS, False
    return spec.thresholds(), spec.recommended_thresholds is not None


def run_task(
    image: str | os.PathLike | bytes | Image.Image | np.ndarray | None,
    model_id: str | None,
    task: Task | str,
    options: Options,
    out_dir: str | os.PathLike,
    progress: Progress | None = None,
    *,
    name: str | None = None,
) -> TaskOutput:
    """Segment one image with one model.

    Args:
        image: the upload: a path, file bytes, PIL image or array (see
            :func:`segdemo.images.load_image`).
        model_id: a registry or discovered-local model id.
        task: ``"semantic"``, ``"instance"`` or ``"panoptic"``.
        options: thresholds and overlay opacity.
        out_dir: existing folder for this request's downloads.
        progress: optional progress callback.
        name: what to call the image in error messages (default: the path's file name).

    Raises:
        :class:`segdemo.errors.SegdemoError` (one line) for anything the caller can fix.
    """
    task = _parse_task(task)
    report = progress or _no_progress
    if name is None and isinstance(image, (str, os.PathLike)):
        name = Path(image).name
    picture = _read_image(image, name)
    allow_any = allow_any_model()
    spec = _check_model(model_id, task, allow_any)
    report(0.1, f"Loading {spec.title}")
    loaded = load_model(spec.id, allow_any=allow_any)
    report(0.4, f"Running {task.value} segmentation")
    # segment() checks the task against the loaded model: a hub id the operator allowed
    # is only known to be universal once loaded
    if options.tta is not None and task is not Task.SEMANTIC:
        raise RequestError(
            f"{options.tta} test-time augmentation is for semantic segmentation only"
        )
    result = segment(
        loaded,
        picture,
        task,
        **options.thresholds.as_kwargs(),
        label_ids_to_fuse=None,
        tta=options.tta,
    )
    report(0.9, "Rendering")
    palette = palettes.palette_for(spec.palette, loaded.id2label)
    return _present(picture, result, palette, spec.id, options.alpha, Path(out_dir), name)


def run_compare(
    image: str | os.PathLike | bytes | Image.Image | np.ndarray | None,
    model_ids: Mapping[Task, str | None],
    options: Options,
    out_dir: str | os.PathLike,
    progress: Progress | None = None,
    *,
    name: str | None = None,
    recommended_thresholds: bool = False,
) -> dict[Task, TaskOutput | str]:
    """One image through every task in ``model_ids``, for side-by-side display.

    A task whose model is missing, not allowed, or fails to load gets a one-line note
    (``str``) in place of its output, so one unavailable model does not sink the
    comparison. A bad image still raises, since no task could run.

    Args:
        recommended_thresholds: run each task with its model's recommended thresholds
            (:meth:`segdemo.registry.ModelSpec.thresholds`) instead of those in
            ``options``; only ``options.alpha`` then applies. The app's Compare tab has
            no threshold sliders and sets this.

    Returns:
        ``{task: TaskOutput or note}`` in the order of ``model_ids``.
    """
    report = progress or _no_progress
    if name is None and isinstance(image, (str, os.PathLike)):
        name = Path(image).name
    picture = _read_image(image, name)
    outputs: dict[Task, TaskOutput | str] = {}
    for index, (task, model_id) in enumerate(model_ids.items()):
        task = _parse_task(task)
        if not model_id:
            outputs[task] = no_model_message(task)
            continue
        start, span = index / len(model_ids), 1 / len(model_ids)
        task_dir = Path(out_dir) / task.value
        task_dir.mkdir(parents=True, exist_ok=True)
        try:
            task_options = options
            if recommended_thresholds:
                spec = registry.get_spec(model_id, allow_any=allow_any_model())
                task_options = options.with_thresholds(spec.thresholds())
            outputs[task] = run_task(
                picture,
                model_id,
                task,
                task_options,
                task_dir,
                lambda f, d, s=start, w=span: report(s + f * w, d),
                name=name,
            )
        except _MODEL_ERRORS as err:
            outputs[task] = str(err)
    return outputs


def new_request_dir(root: str | os.PathLike | None = None, max_age_s: float = 3600) -> Path:
    """A fresh folder for one request's downloads; siblings older than ``max_age_s`` are removed.

    ``root`` defaults to ``<tmp>/segdemo-requests`` (gradio serves files from the
    system temp dir); clean-up keeps a long-running Space from filling its disk.
    """
    base = Path(root) if root is not None else Path(tempfile.gettempdir()) / "segdemo-requests"
    base.mkdir(parents=True, exist_ok=True)
    cutoff = time.time() - max_age_s
    for old in base.iterdir():
        try:
            if old.is_dir() and old.stat().st_mtime < cutoff:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:  # a concurrent request removed it first
            pass
    return Path(tempfile.mkdtemp(dir=base))


def _no_progress(fraction: float, description: str) -> None:
    pass


def _parse_task(task: Task | str) -> Task:
    try:
        return Task.parse(task)
    except ValueError as err:
        raise RequestError(str(err)) from None


def _read_image(image, name: str | None) -> Image.Image:
    if image is None or (isinstance(image, str) and not image):
        raise RequestError("no image given; upload an image or pick an example")
    return load_image(image, name)


def _check_model(model_id: str | None, task: Task, allow_any: bool) -> ModelSpec:
    """The spec of ``model_id``, refused before anything loads if it cannot do ``task``."""
    if not model_id:
        raise RequestError(f"no model selected; pick a {task.value} model from the list")
    spec = registry.get_spec(model_id, allow_any=allow_any)
    spec.require(task)
    return spec


def no_model_message(task: Task) -> str:
    """One line saying that no model for ``task`` is available, and how to get one."""
    # no server path here: the message goes to whoever uses the app
    return (
        f"No {task.value} model is available here: add a checkpoint that supports {task.value} "
        "segmentation to checkpoints/ (or $SEGDEMO_CHECKPOINTS) and restart, "
        "or run with the Hugging Face hub reachable"
    )


def _present(
    picture: Image.Image,
    result: SegmentationResult,
    palette: np.ndarray,
    model_id: str,
    alpha: float,
    out_dir: Path,
    image_name: str | None,
) -> TaskOutput:
    files = write_result_files(
        out_dir, result.task.value, result, model_id=model_id, image_name=image_name
    )

    shown_image, shown = _display_size(picture, result)
    colors = render.segment_colors(shown, palette)
    overlay = render.render(shown_image, shown, palette, alpha=alpha)
    names = _segment_names(replace(result, segments=[s for s in result.segments if s.area > 0]))
    total = float(result.label_map.size)
    # post-processors may report a segment that later ones covered entirely: nothing to show
    by_area = sorted((s for s in result.segments if s.area > 0), key=lambda s: -s.area)
    table = [
        [
            names[s.id],
            None if s.score is None else round(float(s.score), 3),
            round(100.0 * s.area / total, 2),
        ]
        for s in by_area
    ]
    present = {s.id for s in shown.segments if s.area > 0}
    # gradio draws a mask's value as its opacity, so the slider applies here as in the overlay
    annotations = [
        ((shown.label_map == s.id).astype(np.float32) * np.float32(alpha), names[s.id])
        for s in by_area
        if s.id in present
    ]
    color_map = {names[s.id]: render.to_hex(colors[s.id]) for s in by_area if s.id in present}
    return TaskOutput(
        task=result.task,
        model_id=model_id,
        image=shown_image,
        annotations=annotations,
        color_map=color_map,
        overlay=overlay,
        table=table,
        label_map_png=files.labels,
        segments_json=files.segments,
        result=result,
    )


def _segment_names(result: SegmentationResult) -> dict[int, str]:
    """Unique display name per segment id: the class name, numbered by size when a class
    repeats (``"car 1"`` is the largest car, as in the table's order)."""
    per_label: dict[str, int] = {}
    for s in result.segments:
        per_label[s.label] = per_label.get(s.label, 0) + 1
    seen: dict[str, int] = {}
    names = {}
    for s in sorted(result.segments, key=lambda s: (-s.area, s.id)):
        if per_label[s.label] == 1:
            names[s.id] = s.label
        else:
            seen[s.label] = seen.get(s.label, 0) + 1
            names[s.id] = f"{s.label} {seen[s.label]}"
    return dict(sorted(names.items()))


def _display_size(
    picture: Image.Image, result: SegmentationResult
) -> tuple[np.ndarray, SegmentationResult]:
    """Shrink image and label map so the longest side is at most :data:`DISPLAY_MAX_SIDE`.

    The label map is resized with nearest-neighbour (ids must not blend); areas and
    boxes are recomputed so the renderer places labels on what is actually shown.
    """
    width, height = picture.size
    scale = DISPLAY_MAX_SIDE / max(width, height)
    if scale >= 1:
        return np.asarray(picture), result
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = np.asarray(picture.resize(size, Image.Resampling.BILINEAR))
    label_map = np.asarray(
        Image.fromarray(result.label_map.astype(np.int32)).resize(size, Image.Resampling.NEAREST)
    ).astype(np.int32)
    stats = {value: (area, bbox) for value, area, bbox in region_stats(label_map)}
    segments = [
        replace(s, area=stats[s.id][0], bbox=stats[s.id][1])
        for s in result.segments
        if s.id in stats
    ]
    return image, replace(result, label_map=label_map, segments=segments)
