"""Which models segdemo offers: curated hub models plus local checkpoints, as plain data.

A model id is either a curated hub id (``"nvidia/segformer-b0-finetuned-ade-512-512"``)
or ``"local/<folder>"`` for a checkpoint folder found in :func:`checkpoints_dir`. The app's
callers may only use these ids; :func:`get_spec` with ``allow_any=True`` (the CLI, whose
user is the operator, and the app when its operator sets ``SEGDEMO_ALLOW_ANY_MODEL=1``)
also takes other hub ids and checkpoint paths.

A local checkpoint may carry a ``segdemo.json`` next to its ``config.json`` (every key
optional)::

    {"palette": "camvid", "title": "SegFormer trained on CamVid",
     "thresholds": {"threshold": 0.5, "mask_threshold": 0.5, "overlap_mask_area_threshold": 0.8},
     "thing_ids": [8, 9, 10]}

Without a palette it is ``"camvid"`` when ``id2label`` is CamVid's 11 classes, else
``"generated"``. ``thresholds`` (any subset) are the model's recommended instance/panoptic
thresholds (:attr:`ModelSpec.recommended_thresholds`). ``thing_ids`` (universal models
that ``train/run.py`` trained) are the countable classes; the others are stuff: panoptic
results fuse them into one segment per class and instance results leave them out
(:func:`segdemo.segment.segment`).

Where a model's files come from, and whether they are there offline, is
:mod:`segdemo.hub`'s business; loading is :mod:`segdemo.models`'.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from segdemo import palettes
from segdemo.checkpoint import (
    CheckpointError,
    is_checkpoint,
    is_universal,
    model_type,
    read_config,
)
from segdemo.errors import SegdemoError
from segdemo.result import Task
from segdemo.thresholds import DEFAULT_THRESHOLDS, ThresholdError, Thresholds

logger = logging.getLogger(__name__)

ALL_TASKS = (Task.SEMANTIC, Task.INSTANCE, Task.PANOPTIC)
PALETTES = tuple(palettes.PALETTES)
"""Palette names understood by ``segdemo.palettes.palette_for``."""
EMBEDDED_MODEL_ID = "local/segdemo-camvid"
"""The semantic checkpoint trained by ``train/run.py`` and shipped in ``checkpoints/``."""
EMBEDDED_PANOPTIC_MODEL_ID = "local/segdemo-camvid-panoptic"
"""The CamVid panoptic checkpoint trained by ``train/run.py --task panoptic``."""
EMBEDDED_DEFAULTS = {
    Task.SEMANTIC: EMBEDDED_MODEL_ID,
    Task.INSTANCE: EMBEDDED_PANOPTIC_MODEL_ID,
    Task.PANOPTIC: EMBEDDED_PANOPTIC_MODEL_ID,
}
"""The shipped model a UI preselects per task when it is present (away from Spaces)."""
CAMVID_LABELS = palettes.PALETTES["camvid"].names
"""CamVid's 11 class names by class id (raw 11 is void: :data:`segdemo.labels.IGNORE_INDEX`)."""
LOCAL_PREFIX = "local/"
SPEC_FILE = "segdemo.json"


def looks_like_hub_id(name: str) -> bool:
    """``org/name`` shape, and not a ``local/...`` id: worth asking the hub (cache) about."""
    parts = name.split("/")
    return not name.startswith(LOCAL_PREFIX) and len(parts) == 2 and all(parts)


def tasks_for_model_type(kind: str) -> tuple[Task, ...]:
    """The tasks a ``config.model_type`` can do: all three for Mask2Former, MaskFormer and
    OneFormer, semantic for the rest. The one place this is decided."""
    return ALL_TASKS if is_universal(kind) else (Task.SEMANTIC,)


class ModelNotAllowedError(SegdemoError):
    """A model id outside the registry and the local checkpoints, while not allowed."""


class UnsupportedTaskError(SegdemoError):
    """A task the model cannot do; the message lists the tasks it supports."""


@dataclass(frozen=True)
class ModelSpec:
    """One model the app and CLI can offer.

    Attributes:
        id: hub id (``"org/name"``) or ``"local/<folder>"``.
        tasks: tasks to offer it for, in display order.
        palette: a name from :data:`PALETTES`.
        source: ``"hub"`` or ``"local"``.
        path: checkpoint folder for local models, ``None`` for hub models.
        title: short human-readable name for dropdowns.
        description: one line on what it was trained on.
        recommended_thresholds: the instance/panoptic thresholds the model's
            ``segdemo.json`` recommends, ``None`` when it recommends none.
        thing_ids: the class ids its ``segdemo.json`` declares countable, ``None`` when it
            declares none (then nothing is fused or dropped: the pipeline's behaviour).
    """

    id: str
    tasks: tuple[Task, ...]
    palette: str
    source: Literal["hub", "local"]
    path: Path | None = None
    title: str = ""
    description: str = ""
    recommended_thresholds: Thresholds | None = None
    thing_ids: frozenset[int] | None = None

    def supports(self, task: Task | str) -> bool:
        return Task.parse(task) in self.tasks

    def require(self, task: Task | str) -> Task:
        """``task`` as a :class:`Task`; UnsupportedTaskError naming the tasks this model can do.

        The one task check: the app and the CLI call it before loading a model, and
        :func:`segdemo.segment.segment` through ``LoadedModel.check_task``.
        """
        task = Task.parse(task)
        if task not in self.tasks:
            supported = ", ".join(t.value for t in self.tasks)
            raise UnsupportedTaskError(
                f"{self.id} cannot do {task.value} segmentation; it supports: {supported}"
            )
        return task

    def thresholds(self) -> Thresholds:
        """The thresholds to start from: the recommended ones, else :data:`DEFAULT_THRESHOLDS`."""
        return self.recommended_thresholds or DEFAULT_THRESHOLDS


def _hub(model_id: str, tasks, palette: str, title: str, description: str) -> ModelSpec:
    return ModelSpec(model_id, tuple(tasks), palette, "hub", None, title, description)


CURATED: tuple[ModelSpec, ...] = (
    _hub(
        "nvidia/segformer-b0-finetuned-ade-512-512",
        [Task.SEMANTIC],
        "ade20k",
        "SegFormer-B0 · ADE20K",
        "150 indoor/outdoor classes; small and fast (3.8M parameters)",
    ),
    _hub(
        "nvidia/segformer-b1-finetuned-cityscapes-1024-1024",
        [Task.SEMANTIC],
        "cityscapes",
        "SegFormer-B1 · Cityscapes",
        "19 street-scene classes",
    ),
    _hub(
        "shi-labs/oneformer_ade20k_swin_tiny",
        ALL_TASKS,
        "ade20k",
        "OneFormer Swin-T · ADE20K",
        "one model for all three tasks, 150 ADE20K classes",
    ),
    _hub(
        "facebook/mask2former-swin-large-cityscapes-instance",
        [Task.INSTANCE],
        "cityscapes",
        "Mask2Former Swin-L · Cityscapes instances",
        "8 countable street classes (people, vehicles)",
    ),
    _hub(
        "facebook/mask2former-swin-tiny-coco-panoptic",
        [Task.PANOPTIC, Task.INSTANCE, Task.SEMANTIC],
        "coco_panoptic",
        "Mask2Former Swin-T · COCO panoptic",
        "133 COCO things and stuff",
    ),
    _hub(
        "facebook/mask2former-swin-large-cityscapes-panoptic",
        [Task.PANOPTIC, Task.SEMANTIC],
        "cityscapes",
        "Mask2Former Swin-L · Cityscapes panoptic",
        "19 street-scene classes, things and stuff",
    ),
)


# --------------------------------------------------------------------------- local checkpoints


def checkpoints_dir() -> Path:
    """Folder scanned for local checkpoints: ``$SEGDEMO_CHECKPOINTS`` or ``<repo>/checkpoints``."""
    env = os.environ.get("SEGDEMO_CHECKPOINTS")
    return Path(env).expanduser() if env else Path(__file__).resolve().parents[1] / "checkpoints"


def discover_local(folder: str | os.PathLike | None = None) -> list[ModelSpec]:
    """Specs for every checkpoint directly inside ``folder`` (default :func:`checkpoints_dir`).

    Hidden folders (``.NAME.tmp-*`` written by an interrupted save) and folders that
    are not checkpoints are skipped; a checkpoint with an unreadable or unsupported
    config is skipped with a warning, logged once per process and message. Sorted by id.
    """
    root = Path(folder) if folder is not None else checkpoints_dir()
    if not root.is_dir():
        return []
    specs = []
    for path in sorted(root.iterdir()):
        if path.name.startswith(".") or not path.is_dir() or not is_checkpoint(path):
            continue
        try:
            specs.append(local_spec(path, LOCAL_PREFIX + path.name))
        except CheckpointError as err:
            _warn_once(f"skipping checkpoint: {err}")
    return specs


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    """Log ``message`` the first time only: the folder is scanned on every request."""
    if message not in _warned:
        _warned.add(message)
        logger.warning("%s", message)


def local_spec(path: str | os.PathLike, model_id: str | None = None) -> ModelSpec:
    """A :class:`ModelSpec` for one checkpoint folder (tasks from its model type)."""
    path = Path(path)
    kind = model_type(path)
    tasks = tasks_for_model_type(kind)
    extra = _read_spec_file(path)
    palette = extra.get("palette") or _guess_palette(read_config(path).get("id2label") or {})
    if palette not in PALETTES:
        logger.warning("%s: unknown palette %r in %s; using 'generated'", path, palette, SPEC_FILE)
        palette = "generated"
    return ModelSpec(
        id=model_id or str(path),
        tasks=tasks,
        palette=palette,
        source="local",
        path=path,
        title=str(extra.get("title") or path.name),
        description=str(extra.get("description") or f"local {kind} checkpoint"),
        recommended_thresholds=_recommended_thresholds(path, extra.get("thresholds")),
        thing_ids=_thing_ids(path, extra.get("thing_ids")),
    )


def _thing_ids(path: Path, values) -> frozenset[int] | None:
    if values is None:
        return None
    id2label = read_config(path).get("id2label") or {}
    if not isinstance(values, list) or not all(
        isinstance(v, int) and str(v) in id2label for v in values
    ):
        logger.warning("%s: ignoring thing_ids in %s (not a list of class ids)", path, SPEC_FILE)
        return None
    return frozenset(values)


def _recommended_thresholds(path: Path, values) -> Thresholds | None:
    if values is None:
        return None
    try:
        return Thresholds.from_mapping(values)
    except ThresholdError as err:
        logger.warning("%s: ignoring thresholds in %s (%s)", path, SPEC_FILE, err)
        return None


def _read_spec_file(path: Path) -> dict:
    spec_file = path / SPEC_FILE
    if not spec_file.is_file():
        return {}
    try:
        data = json.loads(spec_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        logger.warning("%s: ignoring unreadable %s (%s)", path, SPEC_FILE, err)
        return {}
    return data if isinstance(data, dict) else {}


def _guess_palette(id2label: dict) -> str:
    names = [
        str(id2label.get(str(i), id2label.get(i, ""))).strip().lower() for i in range(len(id2label))
    ]
    return "camvid" if tuple(names) == CAMVID_LABELS else "generated"


# --------------------------------------------------------------------------- lookup


def all_models() -> list[ModelSpec]:
    """Curated hub models first, then local checkpoints."""
    return list(CURATED) + discover_local()


def models_for_task(task: Task | str) -> list[ModelSpec]:
    """The models to offer for ``task``, in :func:`all_models` order."""
    task = Task.parse(task)
    return [spec for spec in all_models() if task in spec.tasks]


def get_spec(model_id: str, *, allow_any: bool = False) -> ModelSpec:
    """The spec for a curated or discovered model id.

    Args:
        model_id: a curated hub id or ``local/<folder>``; surrounding spaces are trimmed.
        allow_any: also any checkpoint folder path or other hub id (``org/name``); its
            tasks are narrowed to what its model type can do when it is loaded. The CLI
            passes True (its user is the operator); the app passes the operator's
            ``SEGDEMO_ALLOW_ANY_MODEL`` setting.

    Raises:
        ModelNotAllowedError: an id outside the registry and the local checkpoints
            (unless ``allow_any``), or neither a checkpoint folder nor a hub id.
    """
    model_id = str(model_id).strip()
    for spec in all_models():
        if spec.id == model_id:
            return spec
    if not allow_any:
        raise ModelNotAllowedError(
            f"model {model_id!r} is not offered here; pick one of the listed models "
            "(the operator can allow others with SEGDEMO_ALLOW_ANY_MODEL=1)"
        )
    path = Path(model_id).expanduser()
    if path.is_dir():
        try:
            return local_spec(path, model_id)
        except CheckpointError as err:  # e.g. an unsupported architecture: one line, not a crash
            raise ModelNotAllowedError(str(err)) from None
    if not looks_like_hub_id(model_id):
        raise ModelNotAllowedError(
            f"model {model_id!r} is neither a checkpoint folder nor a hub id (org/name); check the name"
        )
    return _hub(model_id, ALL_TASKS, "generated", model_id, "hub model")
