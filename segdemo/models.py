"""Loading registry models, with a bounded cache shared by every request.

    >>> loaded = load_model("nvidia/segformer-b0-finetuned-ade-512-512")
    >>> loaded.tasks
    (<Task.SEMANTIC: 'semantic'>,)
    >>> load_model("./runs/mine", allow_any=True)  # the CLI: any folder or hub id

Model names become folders through :func:`segdemo.hub.resolve_model_folder` (a hub id:
its snapshot in the HF cache, downloading only the files
:func:`segdemo.checkpoint.load_checkpoint` reads) and are loaded by ``load_checkpoint``
like local checkpoints. Offline (``HF_HUB_OFFLINE`` set, or the hub does not answer
within 1.5 s) only the cache is used, so an uncached model fails in well under 2 s.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any

from segdemo.checkpoint import CheckpointError, allow_pickle_from_env, load_checkpoint
from segdemo.errors import SegdemoError
from segdemo.hub import resolve_model_folder
from segdemo.registry import (
    ModelNotAllowedError,
    ModelSpec,
    UnsupportedTaskError,
    get_spec,
    tasks_for_model_type,
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


class ModelLoadError(SegdemoError):
    """A model that could not be loaded. ``str(err)`` is one line naming the model and the fix."""


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for :func:`segdemo.segment.segment`.

    Attributes:
        spec: the registry entry it was loaded for, its tasks narrowed to what the
            model type can do.
        model: transformers model in eval mode on ``device``.
        processor: its image processor (``OneFormerProcessor`` for OneFormer).
        device: ``"cuda"`` or ``"cpu"``.
        id2label: ``{class_id: name}`` from the model config, ids ``0..num_labels-1``.
        tasks: ``spec.tasks``: what the registry offers it for, within what its
            architecture can do (semantic models: semantic only).
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
        return self.spec.require(task)


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


def load_model(model_id: str, *, allow_any: bool = False) -> LoadedModel:
    """Load (or fetch from the cache) the model ``model_id``.

    Thread-safe: concurrent first requests for one model load it once; a failed load
    is not cached. The least recently used model is dropped beyond :func:`cache_size`.
    A local checkpoint whose weights file changed (e.g. training saved a better one)
    is reloaded.

    Args:
        model_id: a registry id (curated hub id or ``local/<folder>``).
        allow_any: also any checkpoint folder or hub id (see
            :func:`segdemo.registry.get_spec`): True for the person at the command line.

    Raises:
        ModelNotAllowedError: ``model_id`` is not in the registry (see ``get_spec``).
        ModelLoadError: not available offline, download failed, or a broken checkpoint.
    """
    spec = get_spec(model_id, allow_any=allow_any)
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
    source = spec.path if spec.source == "local" else spec.id
    device = default_device()
    folder = None
    try:
        folder = resolve_model_folder(source, allow_pickle=allow_pickle_from_env())
        model, processor = load_checkpoint(folder, device=device)
    except CheckpointError as err:
        # the full path goes to the server log; callers (maybe over the API) see the model id
        logger.info("%s could not be loaded: %s", spec.id, err)
        detail = str(err)
        for place in {str(source), str(folder)} - {"None"}:
            detail = detail.replace(f"{place}: ", "").replace(place, spec.id)
        raise ModelLoadError(f"{spec.id}: {detail}") from None
    kind = model.config.model_type
    id2label = {int(k): str(v) for k, v in (model.config.id2label or {}).items()}
    # a hub id the operator allowed is offered for every task until its type is known
    possible = tasks_for_model_type(kind)
    spec = replace(spec, tasks=tuple(t for t in spec.tasks if t in possible))
    return LoadedModel(spec, model, processor, device, id2label, spec.tasks, kind)
