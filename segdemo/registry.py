"""Which models segdemo offers: curated hub models plus local checkpoints, as plain data.

A model id is either a curated hub id (``"nvidia/segformer-b0-finetuned-ade-512-512"``)
or ``"local/<folder>"`` for a checkpoint folder found in :func:`checkpoints_dir`. Callers
(app, API) may only use these ids; ``SEGDEMO_ALLOW_ANY_MODEL=1`` lifts that for other hub
ids and checkpoint paths.

A local checkpoint may carry a ``segdemo.json`` next to its ``config.json``:
``{"palette": "camvid", "title": "SegFormer trained on CamVid"}`` (both optional).
Without it the palette is ``"camvid"`` when ``id2label`` is CamVid's 11 classes, else
``"generated"``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from segdemo.checkpoint import (
    CheckpointError,
    hub_snapshot,
    is_checkpoint,
    is_complete_snapshot,
    is_universal,
    model_type,
    read_config,
)
from segdemo.result import Task

logger = logging.getLogger(__name__)

ALL_TASKS = (Task.SEMANTIC, Task.INSTANCE, Task.PANOPTIC)
PALETTES = ("ade20k", "cityscapes", "coco_panoptic", "camvid", "generated")
"""Palette names understood by ``segdemo.palettes.palette_for``."""
EMBEDDED_MODEL_ID = "local/segdemo-camvid"
"""The checkpoint trained by ``train/run.py`` and shipped in ``checkpoints/`` (default offline)."""
CAMVID_LABELS = (
    "sky",
    "building",
    "pole",
    "road",
    "pavement",
    "tree",
    "sign_symbol",
    "fence",
    "car",
    "pedestrian",
    "bicyclist",
)
"""CamVid's 11 class names by class id (raw 11 is void: :data:`segdemo.labels.IGNORE_INDEX`)."""
LOCAL_PREFIX = "local/"
SPEC_FILE = "segdemo.json"


class ModelNotAllowedError(ValueError):
    """A model id outside the registry and the local checkpoints, while not allowed."""


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
    """

    id: str
    tasks: tuple[Task, ...]
    palette: str
    source: Literal["hub", "local"]
    path: Path | None = None
    title: str = ""
    description: str = ""

    def supports(self, task: Task | str) -> bool:
        return Task.parse(task) in self.tasks


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
    tasks = ALL_TASKS if is_universal(kind) else (Task.SEMANTIC,)
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
    )


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


def allow_any_model() -> bool:
    return os.environ.get("SEGDEMO_ALLOW_ANY_MODEL", "").strip().lower() in {"1", "true", "yes"}


def get_spec(model_id: str) -> ModelSpec:
    """The spec for a curated or discovered model id.

    With ``SEGDEMO_ALLOW_ANY_MODEL=1`` also any checkpoint folder path or other hub id
    (its tasks are then checked when the model is loaded).

    Raises:
        ModelNotAllowedError: an id outside the registry and the local checkpoints.
    """
    model_id = str(model_id).strip()
    for spec in all_models():
        if spec.id == model_id:
            return spec
    if not allow_any_model():
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
    if model_id.startswith(LOCAL_PREFIX) or model_id.count("/") != 1:
        raise ModelNotAllowedError(
            f"model {model_id!r} is neither a checkpoint folder nor a hub id (org/name); check the name"
        )
    return _hub(model_id, ALL_TASKS, "generated", model_id, "hub model")


# --------------------------------------------------------------------------- availability


def hub_offline_env() -> bool:
    """True when ``HF_HUB_OFFLINE`` asks for no network."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


_PROBE_TIMEOUT_S = 1.5
_PROBE_TTL_S = 60.0
_probe_lock = threading.Lock()
_probe_cache: tuple[float, bool] | None = None


def hub_reachable() -> bool:
    """Whether the HF hub answers: False at once under ``HF_HUB_OFFLINE``; otherwise a
    probe of at most 1.5 s, its answer cached for a minute."""
    global _probe_cache
    if hub_offline_env():
        return False
    with _probe_lock:
        now = time.monotonic()
        if _probe_cache is not None and now - _probe_cache[0] < _PROBE_TTL_S:
            return _probe_cache[1]
        reachable = _probe()
        _probe_cache = (time.monotonic(), reachable)
        return reachable


def _probe() -> bool:
    # in a daemon thread: DNS resolution has no timeout of its own and may hang for long
    from huggingface_hub import constants

    answer: list[bool] = []

    def probe() -> None:
        import httpx

        try:
            response = httpx.head(
                constants.ENDPOINT, timeout=_PROBE_TIMEOUT_S, follow_redirects=False
            )
            answer.append(response.status_code < 500)
        except Exception:
            answer.append(False)

    thread = threading.Thread(target=probe, name="segdemo-hub-probe", daemon=True)
    thread.start()
    thread.join(_PROBE_TIMEOUT_S)
    return bool(answer and answer[0])


def cached_snapshot(repo_id: str) -> Path | None:
    """The HF-cache snapshot of ``repo_id`` if it holds everything needed to load it, else None."""
    try:
        folder = hub_snapshot(repo_id, local_files_only=True)
    except Exception:  # not cached (LocalEntryNotFoundError) or a broken cache entry
        return None
    return folder if is_complete_snapshot(folder) else None


def is_available_offline(spec: ModelSpec) -> bool:
    """True if ``spec`` loads without network: a local checkpoint, or fully in the HF cache."""
    if spec.source == "local":
        return spec.path is not None and is_checkpoint(spec.path)
    return cached_snapshot(spec.id) is not None


class UnsupportedTaskError(ValueError):
    """A task the model cannot do; the message lists the tasks it supports."""


def require_task(model_name: str, tasks: tuple[Task, ...], task: Task | str) -> Task:
    """``task`` as a :class:`Task`, or UnsupportedTaskError naming the tasks ``model_name`` can do."""
    task = Task.parse(task)
    if task not in tasks:
        supported = ", ".join(t.value for t in tasks)
        raise UnsupportedTaskError(
            f"{model_name} cannot do {task.value} segmentation; it supports: {supported}"
        )
    return task


def prefers_hub() -> bool:
    """Whether a UI should preselect curated hub models.

    True on a Hugging Face Space (``SPACE_ID`` is set there) or with
    ``SEGDEMO_PREFER_HUB=1``, unless ``HF_HUB_OFFLINE`` is set. Decided from the
    environment alone, so building the UI sends no request: the hub is contacted only
    when somebody runs a hub model.
    """
    if hub_offline_env():
        return False
    return bool(os.environ.get("SPACE_ID")) or os.environ.get("SEGDEMO_PREFER_HUB", "") == "1"


def default_model(task: Task | str) -> ModelSpec | None:
    """The model a UI preselects for ``task``.

    On a Space (:func:`prefers_hub`): the first curated model for the task. Elsewhere:
    the embedded checkpoint (:data:`EMBEDDED_MODEL_ID`) when present and suitable, else
    the first model available offline, else (unless ``HF_HUB_OFFLINE``) the first
    curated one, else ``None``.
    """
    task = Task.parse(task)
    candidates = models_for_task(task)
    if prefers_hub():
        curated = [s for s in candidates if s.source == "hub"]
        return (curated or candidates or [None])[0]
    embedded = [s for s in candidates if s.id == EMBEDDED_MODEL_ID]
    if embedded:
        return embedded[0]
    offline = next((s for s in candidates if is_available_offline(s)), None)
    if offline is not None or hub_offline_env():
        return offline
    return next((s for s in candidates if s.source == "hub"), None)
