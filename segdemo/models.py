"""Loading registry models, with a bounded cache shared by every request.

    >>> loaded = load_model("nvidia/segformer-b0-finetuned-ade-512-512")
    >>> loaded.tasks
    (<Task.SEMANTIC: 'semantic'>,)

Hub ids are resolved to a snapshot folder in the HF cache (downloading only the files
:func:`segdemo.checkpoint.load_checkpoint` reads) and loaded by that same function as
local checkpoints. Offline (``HF_HUB_OFFLINE`` set, or the hub does not answer within
1.5 s) only the cache is used, so an uncached model fails in well under 2 s.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segdemo.checkpoint import (
    CheckpointError,
    allow_pickle_from_env,
    hub_snapshot,
    is_universal,
    load_checkpoint,
)
from segdemo.registry import (
    ALL_TASKS,
    ModelNotAllowedError,
    ModelSpec,
    UnsupportedTaskError,  # noqa: F401  (re-exported: models.UnsupportedTaskError)
    cached_snapshot,
    get_spec,
    hub_offline_env,
    hub_reachable,
    require_task,
)
from segdemo.result import Task

logger = logging.getLogger(__name__)

__all__ = [
    "LoadedModel",
    "ModelLoadError",
    "ModelNotAllowedError",
    "UnsupportedTaskError",
    "cache_size",
    "cached_model_ids",
    "clear_cache",
    "load_model",
]

DEFAULT_CACHE_SIZE = 2


class ModelLoadError(ValueError):
    """A model that could not be loaded. ``str(err)`` is one line naming the model and the fix."""


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for :func:`segdemo.segment.segment`.

    Attributes:
        spec: the registry entry it was loaded for.
        model: transformers model in eval mode on ``device``.
        processor: its image processor (``OneFormerProcessor`` for OneFormer).
        device: ``"cuda"`` or ``"cpu"``.
        id2label: ``{class_id: name}`` from the model config, ids ``0..num_labels-1``.
        tasks: tasks the architecture supports (semantic models: semantic only).
        model_type: ``config.model_type``, e.g. ``"segformer"``, ``"mask2former"``.
    """

    spec: ModelSpec
    model: Any = field(repr=False)
    processor: Any = field(repr=False)
    device: str
    id2label: dict[int, str]
    tasks: tuple[Task, ...]
    model_type: str

    def check_task(self, task: Task | str) -> Task:
        """``task`` as a :class:`Task`; UnsupportedTaskError if this model cannot do it."""
        return require_task(self.spec.id, self.tasks, task)


def cache_size() -> int:
    """Models kept loaded at once: ``$SEGDEMO_MODEL_CACHE`` (default 2, at least 1)."""
    try:
        return max(1, int(os.environ.get("SEGDEMO_MODEL_CACHE", DEFAULT_CACHE_SIZE)))
    except ValueError:
        return DEFAULT_CACHE_SIZE


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


_lock = threading.Lock()
_cache: OrderedDict[str, tuple[Any, LoadedModel]] = OrderedDict()
_loading: dict[str, threading.Lock] = {}


def load_model(model_id: str) -> LoadedModel:
    """Load (or fetch from the cache) the registry model ``model_id``.

    Thread-safe: concurrent first requests for one model load it once; a failed load
    is not cached. The least recently used model is dropped beyond :func:`cache_size`.
    A local checkpoint whose weights file changed (e.g. training saved a better one)
    is reloaded.

    Raises:
        ModelNotAllowedError: ``model_id`` is not in the registry (see ``get_spec``).
        ModelLoadError: not available offline, download failed, or a broken checkpoint.
    """
    spec = get_spec(model_id)
    version = _version(spec)
    with _lock:
        hit = _cached(spec.id, version)
        if hit is not None:
            return hit
        key_lock = _loading.setdefault(spec.id, threading.Lock())
    with key_lock:
        with _lock:
            hit = _cached(spec.id, version)
            if hit is not None:
                return hit
        loaded = _load(spec)
        with _lock:
            _cache[spec.id] = (version, loaded)
            _cache.move_to_end(spec.id)
            while len(_cache) > cache_size():
                _cache.popitem(last=False)
            _loading.pop(spec.id, None)
    _release_device_memory()
    return loaded


def _cached(model_id: str, version: Any) -> LoadedModel | None:
    entry = _cache.get(model_id)
    if entry is None or entry[0] != version:
        return None
    _cache.move_to_end(model_id)
    return entry[1]


def cached_model_ids() -> list[str]:
    """Ids of the models currently loaded, least recently used first."""
    with _lock:
        return list(_cache)


def clear_cache() -> None:
    """Drop every loaded model."""
    with _lock:
        _cache.clear()
    _release_device_memory()


def _release_device_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _version(spec: ModelSpec) -> Any:
    """What identifies the files of a local checkpoint: the weights' mtime and size."""
    if spec.source != "local" or spec.path is None:
        return None
    for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"):
        path = spec.path / name
        if path.is_file():
            stat = path.stat()
            return (str(path), stat.st_mtime_ns, stat.st_size)
    return None


def _load(spec: ModelSpec) -> LoadedModel:
    folder = spec.path if spec.source == "local" else _resolve_hub(spec.id)
    device = default_device()
    try:
        model, processor = load_checkpoint(folder, device=device)
    except CheckpointError as err:
        # the full path goes to the server log; callers (maybe over the API) see the model id
        logger.info("%s could not be loaded: %s", spec.id, err)
        detail = str(err).replace(f"{folder}: ", "").replace(str(folder), spec.id)
        raise ModelLoadError(f"{spec.id}: {detail}") from None
    kind = model.config.model_type
    id2label = {int(k): str(v) for k, v in (model.config.id2label or {}).items()}
    tasks = ALL_TASKS if is_universal(kind) else (Task.SEMANTIC,)
    return LoadedModel(spec, model, processor, device, id2label, tasks, kind)


def _resolve_hub(repo_id: str) -> Path:
    # a complete cached snapshot is used as is: no network round trip per load
    cached = cached_snapshot(repo_id)
    if cached is not None:
        return cached
    if hub_offline_env() or not hub_reachable():
        why = (
            "HF_HUB_OFFLINE is set"
            if hub_offline_env()
            else "the Hugging Face hub is not reachable"
        )
        raise ModelLoadError(
            f"{repo_id} is not in the local Hugging Face cache and {why}: connect to the network and try "
            "again, or train or copy a checkpoint into the checkpoints folder (SEGDEMO_CHECKPOINTS, "
            "default checkpoints/) and pick it as local/<folder>"
        )
    allow_pickle = allow_pickle_from_env()
    try:
        folder = hub_snapshot(repo_id, local_files_only=False, allow_pickle=allow_pickle)
    except Exception as err:  # network errors, gated/missing repos: one line for the user
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(
            f"{repo_id}: download from the Hugging Face hub failed ({reason[:200]})"
        ) from None
    return folder
