"""The Hugging Face Hub in one place: whether to use the network, and turning a model name
(a checkpoint folder or a hub id) into a local folder.

    >>> folder = resolve_model_folder("nvidia/segformer-b0-finetuned-ade-512-512")
    >>> model, processor = load_checkpoint(folder)  # segdemo.checkpoint: folders only

``HF_HUB_OFFLINE`` is parsed here and nowhere else (:func:`offline`). A hub id is served
from a complete snapshot in the HF cache without any request. Otherwise, unless offline or
the hub does not answer a 1.5 s probe, the files ``load_checkpoint`` reads (and nothing
else) are downloaded; an uncached model fails in well under 2 s when offline.

The app, the CLI, evaluation and training all resolve model names through
:func:`resolve_model_folder`; what the *app* may load at all is the registry's business
(:func:`segdemo.registry.get_spec`).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from segdemo.checkpoint import (
    PROCESSOR_FILES,
    SAFETENSORS_FILES,
    TOKENIZER_FILES,
    CheckpointError,
    has_processor,
    is_checkpoint,
    oneformer_image_processor_config,
    read_config,
)
from segdemo.registry import looks_like_hub_id

if TYPE_CHECKING:
    from segdemo.registry import ModelSpec

HUB_PATTERNS = (
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*.safetensors",
    *PROCESSOR_FILES,
    *TOKENIZER_FILES,
    "segdemo.json",
)
"""Files fetched for a hub model: what ``load_checkpoint`` reads, nothing else
(``pipeline()`` probes a dozen optional files, each costing retries when offline)."""
PICKLE_PATTERNS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*.bin")

_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's own reading of boolean variables


def offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` asks for no network (``1``/``on``/``yes``/``true``)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in _TRUE


def prefers_hub() -> bool:
    """Whether a UI should preselect curated hub models.

    True on a Hugging Face Space (``SPACE_ID`` is set there) or with
    ``SEGDEMO_PREFER_HUB=1``, unless :func:`offline`. Decided from the environment alone,
    so building the UI sends no request: the hub is contacted only when somebody runs a
    hub model.
    """
    if offline():
        return False
    return bool(os.environ.get("SPACE_ID")) or os.environ.get("SEGDEMO_PREFER_HUB", "") == "1"


# --------------------------------------------------------------------------- reachability

_PROBE_TIMEOUT_S = 1.5
_PROBE_TTL_S = 60.0
_probe_lock = threading.Lock()
_probe_cache: tuple[float, bool] | None = None


def reachable() -> bool:
    """Whether the HF hub answers: False at once when :func:`offline`; otherwise a probe of
    at most 1.5 s, its answer cached for a minute."""
    global _probe_cache
    if offline():
        return False
    with _probe_lock:
        now = time.monotonic()
        if _probe_cache is not None and now - _probe_cache[0] < _PROBE_TTL_S:
            return _probe_cache[1]
        answer = _probe()
        _probe_cache = (time.monotonic(), answer)
        return answer


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


# --------------------------------------------------------------------------- snapshots


def _snapshot(repo_id: str, *, local_files_only: bool, allow_pickle: bool = False) -> Path:
    """The snapshot folder of ``repo_id`` in the HF cache, downloading unless ``local_files_only``.

    For OneFormer the class-info file its processor needs (a hub dataset file) is fetched
    or found in the cache too. Raises huggingface_hub's errors (``LocalEntryNotFoundError``
    when not cached); :func:`resolve_model_folder` turns them into one line.
    """
    from huggingface_hub import hf_hub_download, snapshot_download

    patterns = list(HUB_PATTERNS) + (list(PICKLE_PATTERNS) if allow_pickle else [])
    folder = Path(
        snapshot_download(repo_id, allow_patterns=patterns, local_files_only=local_files_only)
    )
    if (folder / "config.json").is_file() and read_config(folder).get("model_type") == "oneformer":
        config = oneformer_image_processor_config(folder)
        repo_path, class_info_file = config.get("repo_path"), config.get("class_info_file")
        if class_info_file and not config.get("metadata") and repo_path and "/" in repo_path:
            hf_hub_download(
                repo_path, class_info_file, repo_type="dataset", local_files_only=local_files_only
            )
    return folder


def _cached(repo_id: str) -> Path | None:
    try:
        return _snapshot(repo_id, local_files_only=True)
    except Exception:  # not cached (LocalEntryNotFoundError) or a broken cache entry
        return None


def is_complete_snapshot(folder: str | os.PathLike) -> bool:
    """True if a snapshot folder holds config, safetensors weights and a processor config."""
    folder = Path(folder)
    return (
        (folder / "config.json").is_file()
        and any((folder / n).is_file() for n in SAFETENSORS_FILES)
        and has_processor(folder)
    )


def cached_snapshot(repo_id: str) -> Path | None:
    """The HF-cache snapshot of ``repo_id`` if it holds everything needed to load it, else None.

    Never touches the network.
    """
    folder = _cached(repo_id)
    return folder if folder is not None and is_complete_snapshot(folder) else None


def is_available_offline(spec: ModelSpec) -> bool:
    """True if ``spec`` loads without network: a local checkpoint, or complete in the HF cache."""
    if spec.source == "local":
        return spec.path is not None and is_checkpoint(spec.path)
    return cached_snapshot(spec.id) is not None


# --------------------------------------------------------------------------- the resolver


def resolve_model_folder(name: str | os.PathLike, *, allow_pickle: bool = False) -> Path:
    """The local folder holding the model ``name``: the one resolver of model names.

    Args:
        name: a checkpoint folder (returned as is), or a hub id ``org/name``.
        allow_pickle: also download ``pytorch_model*.bin`` weights (loading them is still
            refused by ``load_checkpoint`` unless allowed there).

    Returns:
        The folder; for a hub id its snapshot in the HF cache. A complete cached snapshot
        is used without any request. When offline (or the hub does not answer), a cached
        snapshot that lacks some files (e.g. a backbone-only repo without processor
        files) is returned as well: the loader says what is missing.

    Raises:
        CheckpointError: one line: neither a folder nor a hub id; not cached while
            offline or unreachable; the download failed. Starts with ``name``.
    """
    text = str(name).strip()
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if not looks_like_hub_id(text):
        raise CheckpointError(
            f"{text}: no such checkpoint folder, and not a hub id (org/name); check the name"
        )
    cached = cached_snapshot(text)
    if cached is not None:
        return cached
    if offline() or not reachable():
        partial = _cached(text)
        if partial is not None and (partial / "config.json").is_file():
            return partial
        why = "HF_HUB_OFFLINE is set" if offline() else "the Hugging Face hub is not reachable"
        raise CheckpointError(
            f"{text}: not in the local Hugging Face cache and {why}: connect to the network and "
            "try again, or train or copy a checkpoint into the checkpoints folder "
            "(SEGDEMO_CHECKPOINTS, default checkpoints/) and pick it as local/<folder>"
        )
    try:
        return _snapshot(text, local_files_only=False, allow_pickle=allow_pickle)
    except Exception as err:  # network errors, gated or missing repos: one line for the user
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{text}: download from the Hugging Face hub failed ({reason[:200]})"
        ) from None
