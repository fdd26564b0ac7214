"""The one save/load path for model checkpoints, used by train/, the app and the CLI.

A checkpoint is a folder holding a transformers ``config.json``, safetensors weights
(``model.safetensors`` or a sharded index) and the processor files
(``preprocessor_config.json`` / ``processor_config.json``, plus tokenizer files for
OneFormer). Hub ids are first resolved to such a folder (a snapshot in the HF cache) by
:func:`segdemo.hub.resolve_model_folder` and then loaded by :func:`load_checkpoint` like
any other.

Saving is atomic: files are written into a hidden sibling temp folder
(``.NAME.tmp-PID-RANDOM``) which is renamed onto ``NAME`` only when complete, so a killed
process never leaves a half-written folder under the final name. Discovery skips hidden
folders, and :func:`is_checkpoint` refuses temp names.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from segdemo.errors import SegdemoError

logger = logging.getLogger(__name__)

UNIVERSAL_MODEL_TYPES = frozenset({"mask2former", "maskformer", "oneformer"})
"""``config.model_type`` of models loaded with ``AutoModelForUniversalSegmentation``
(they support semantic, instance and panoptic segmentation)."""

SAFETENSORS_FILES = ("model.safetensors", "model.safetensors.index.json")
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
)
_TEMP_MARKERS = (".tmp-", ".old-")


class CheckpointError(SegdemoError):
    """A folder that cannot be loaded as a checkpoint. ``str(err)`` is one line naming the folder."""


def semantic_model_types() -> frozenset[str]:
    """``config.model_type`` values that ``AutoModelForSemanticSegmentation`` can build."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES,
    )

    return frozenset(MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES)


def supported_model_types() -> frozenset[str]:
    return semantic_model_types() | UNIVERSAL_MODEL_TYPES


def allow_pickle_from_env() -> bool:
    """True when the operator opted in to pickle (``.bin``) weights with ``SEGDEMO_ALLOW_PICKLE=1``."""
    return os.environ.get("SEGDEMO_ALLOW_PICKLE", "").strip().lower() in {"1", "true", "yes"}


# --------------------------------------------------------------------------- saving


def save_checkpoint(
    out_dir: str | os.PathLike,
    model: Any,
    processor: Any,
    extra_files: dict[str, str | bytes] | None = None,
    keep: tuple[str, ...] = (),
    weights_dtype: Any = None,
) -> Path:
    """Write ``model`` (safetensors) and ``processor`` to ``out_dir`` atomically.

    Args:
        out_dir: final checkpoint folder; its parent is created if needed. An existing
            checkpoint there is replaced only once the new one is completely written.
        model: a transformers ``PreTrainedModel`` (saved with ``save_pretrained``).
        processor: its image processor or processor (``None`` to save weights only).
        extra_files: more files to put in the folder, ``{relative_name: text or bytes}``
            (e.g. ``"README.md"``, ``"trainer_state.json"``, ``"palette.json"``).
        keep: names of entries of an existing ``out_dir`` to carry into the new one (e.g.
            train/run.py's ``"state"`` resume folder). They are hard-linked into the temp
            folder before the swap, so they exist under ``out_dir`` at every instant.
        weights_dtype: store floating-point tensors in this ``torch.dtype`` (e.g.
            ``torch.float16`` halves the file for Spaces' 10 MB non-LFS limit). config.json
            keeps the model's own dtype, so :func:`load_checkpoint` gives it back in float32.

    Returns:
        ``out_dir`` as a Path.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        state_dict = None
        if weights_dtype is not None:
            state_dict = {
                k: v.to(weights_dtype) if v.is_floating_point() else v
                for k, v in model.state_dict().items()
            }
        model.save_pretrained(tmp, state_dict=state_dict)
        if processor is not None:
            processor.save_pretrained(tmp)
        for name, content in (extra_files or {}).items():
            target = tmp / name
            if (
                target.resolve().parent != tmp.resolve()
                and tmp.resolve() not in target.resolve().parents
            ):
                raise ValueError(
                    f"extra file name {name!r} escapes the checkpoint folder; use a relative name"
                )
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, str):
                target.write_text(content, encoding="utf-8")
            else:
                target.write_bytes(content)
        for name in keep:
            if (out / name).exists() and not (tmp / name).exists():
                _link_tree(out / name, tmp / name)
        _fsync_tree(tmp)
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _link_tree(source: Path, target: Path) -> None:
    """Hard-link ``source`` (file or folder) to ``target``: no data copied, and the old
    checkpoint's copy can be deleted after the swap without touching the new one."""
    if source.is_file():
        os.link(source, target)
        return
    target.mkdir()
    for entry in source.iterdir():
        _link_tree(entry, target / entry.name)


def _swap_into_place(tmp: Path, out: Path) -> None:
    if not out.exists():
        os.replace(tmp, out)
    elif not _exchange(tmp, out):
        # no atomic exchange (not Linux): the old folder is moved aside first; a kill between
        # the two renames leaves it as ``.NAME.old-*``, which save_checkpoint restores next time
        old = out.parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
        os.replace(tmp, out)
        tmp = old
    # after the exchange (or the fallback) ``tmp`` holds the previous checkpoint
    shutil.rmtree(tmp, ignore_errors=True)
    _fsync_dir(out.parent)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with Linux ``renameat2(RENAME_EXCHANGE)``; False where unsupported."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return result == 0


def _remove_stale_temps(out: Path) -> None:
    """Delete temp folders of ``out`` left by killed processes; restore a moved-aside checkpoint."""
    for path in out.parent.glob(f".{glob.escape(out.name)}.*-*-*"):
        kind, _, rest = path.name[len(out.name) + 2 :].partition("-")
        pid = rest.split("-")[0]
        if kind not in ("tmp", "old") or not pid.isdigit() or _pid_alive(int(pid)):
            continue
        if kind == "old" and not out.exists() and is_checkpoint(path, allow_temp_names=True):
            os.replace(path, out)
        else:
            shutil.rmtree(path, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_tree(folder: Path) -> None:
    # a rename is only as durable as the data it points at: flush files before publishing
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- inspecting


def is_checkpoint(path: str | os.PathLike, *, allow_temp_names: bool = False) -> bool:
    """True if ``path`` is a folder with ``config.json`` and weights (safetensors or pickle).

    Temp folders written by :func:`save_checkpoint` (``.NAME.tmp-*``) are never checkpoints.
    """
    folder = Path(path)
    if (
        not allow_temp_names
        and any(m in folder.name for m in _TEMP_MARKERS)
        and folder.name.startswith(".")
    ):
        return False
    if not (folder / "config.json").is_file():
        return False
    return any((folder / name).is_file() for name in SAFETENSORS_FILES + PICKLE_FILES)


def read_config(folder: str | os.PathLike) -> dict:
    """The parsed ``config.json`` of a checkpoint folder; CheckpointError if missing or invalid."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such checkpoint folder")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CheckpointError(
            f"{folder}: config.json is missing; a checkpoint needs config.json and model.safetensors"
        )
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(
            f"{folder}: config.json is not valid JSON ({err}); re-save the checkpoint"
        ) from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{folder}: config.json is not a JSON object; re-save the checkpoint")
    return config


def model_type(folder: str | os.PathLike) -> str:
    """``config.model_type`` of a checkpoint, checked against the supported architectures."""
    config = read_config(folder)
    kind = config.get("model_type")
    if kind not in supported_model_types():
        supported = ", ".join(sorted(supported_model_types()))
        raise CheckpointError(
            f"{folder}: unsupported architecture {kind!r}; segdemo loads semantic-segmentation models ({supported})"
        )
    return kind


def is_universal(kind: str) -> bool:
    """True for model types that do semantic, instance and panoptic segmentation."""
    return kind in UNIVERSAL_MODEL_TYPES


# --------------------------------------------------------------------------- loading


def load_checkpoint(
    folder: str | os.PathLike, *, allow_pickle: bool = False, device: str = "cpu"
) -> tuple[Any, Any]:
    """Load a checkpoint folder as ``(model, processor)``, ready for inference.

    Args:
        folder: a local checkpoint folder (see module docstring). No network access.
        allow_pickle: also accept ``pytorch_model.bin`` weights (pickle can run code; off
            unless the caller or ``SEGDEMO_ALLOW_PICKLE=1`` opts in).
        device: torch device for the model (``"cpu"``, ``"cuda"``, ...).

    Returns:
        ``model``: ``AutoModelForSemanticSegmentation`` or, for Mask2Former/MaskFormer/
        OneFormer, ``AutoModelForUniversalSegmentation``, in eval mode on ``device``.
        ``processor``: the image processor (PIL backend); for OneFormer a
        ``OneFormerProcessor`` with its tokenizer.

    Raises:
        CheckpointError: missing config or weights, corrupt safetensors, unsupported
            architecture, weights not matching the config, or a missing processor.
    """
    folder = Path(folder)
    kind = model_type(folder)
    use_safetensors = check_weights(folder, allow_pickle or allow_pickle_from_env())
    model = _load_model(folder, kind, use_safetensors)
    processor = load_processor(folder, kind)
    model.to(device)
    model.eval()
    return model, processor


def check_weights(folder: Path, allow_pickle: bool) -> bool:
    """Validate a folder's weight files; returns whether to load safetensors (else pickle).

    Raises:
        CheckpointError: no weights, corrupt safetensors, or pickle weights only while
            ``allow_pickle`` is False.
    """
    safetensors = [folder / n for n in SAFETENSORS_FILES if (folder / n).is_file()]
    if safetensors:
        for path in _safetensors_shards(folder, safetensors[0]):
            _check_safetensors(folder, path)
        return True
    if any((folder / n).is_file() for n in PICKLE_FILES):
        if allow_pickle:
            return False
        raise CheckpointError(
            f"{folder}: only pickle weights (pytorch_model.bin), which can run code when loaded; "
            "convert them to model.safetensors or set SEGDEMO_ALLOW_PICKLE=1"
        )
    raise CheckpointError(
        f"{folder}: no weights (model.safetensors) found; copy the weights next to config.json"
    )


def _safetensors_shards(folder: Path, first: Path) -> list[Path]:
    if first.name != "model.safetensors.index.json":
        return [first]
    try:
        index = json.loads(first.read_text(encoding="utf-8"))
        names = sorted(set(index["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(
            f"{folder}: {first.name} is corrupt ({err}); re-save the checkpoint"
        ) from None
    shards = [folder / n for n in names]
    for shard in shards:
        if not shard.is_file():
            raise CheckpointError(
                f"{folder}: weight shard {shard.name} is missing; copy the complete checkpoint"
            )
    return shards


def _check_safetensors(folder: Path, path: Path) -> None:
    # safe_open parses the header and checks it covers the file: truncation and garbage fail here
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as handle:
            handle.keys()
    except Exception as err:  # safetensors raises its own SafetensorError, or OSError
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(
            f"{folder}: {path.name} is corrupt or truncated ({reason}); re-save or re-download the checkpoint"
        ) from None


def _load_model(folder: Path, kind: str, use_safetensors: bool) -> Any:
    import torch
    from transformers import AutoModelForSemanticSegmentation, AutoModelForUniversalSegmentation

    auto = (
        AutoModelForUniversalSegmentation
        if is_universal(kind)
        else AutoModelForSemanticSegmentation
    )
    try:
        model, info = auto.from_pretrained(
            folder,
            local_files_only=True,
            trust_remote_code=False,
            use_safetensors=use_safetensors,
            # float32 whatever the file stores: fp16 checkpoints (half the size) must not
            # run half precision on CPU, where it is slow and not what parity tests expect
            dtype=torch.float32,
            output_loading_info=True,
        )
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "ignore_mismatched_sizes" in reason:
            raise CheckpointError(
                f"{folder}: the weights do not match config.json (tensor shapes differ); re-save the checkpoint"
            ) from None
        raise CheckpointError(f"{folder}: the model could not be loaded ({reason[:300]})") from None
    missing = list(info.get("missing_keys") or [])
    mismatched = list(info.get("mismatched_keys") or [])
    if missing or mismatched:
        # from_pretrained would silently serve random weights for these: refuse instead
        names = ", ".join(
            str(k if isinstance(k, str) else k[0]) for k in (missing + mismatched)[:3]
        )
        raise CheckpointError(
            f"{folder}: the weights do not match config.json ({len(missing)} missing, "
            f"{len(mismatched)} mismatched, e.g. {names}); re-save the checkpoint"
        )
    return model


def has_processor(folder: Path) -> bool:
    """Whether ``folder`` holds a saved image processor (backbone-only repos may not)."""
    return any((folder / n).is_file() for n in PROCESSOR_FILES)


def load_processor(folder: Path, kind: str) -> Any:
    """The image processor saved in ``folder`` (PIL backend, no remote code), for a model of
    type ``kind``; :class:`CheckpointError` (one line) when it is missing or unreadable."""
    if not has_processor(folder):
        raise CheckpointError(
            f"{folder}: preprocessor_config.json is missing; save the image processor with the model"
        )
    try:
        if kind == "oneformer":
            return _load_oneformer_processor(folder)
        from transformers import AutoImageProcessor

        # PIL backend always: torchvision is not a dependency, and one backend means one
        # set of numbers in tests, the app and the benchmark
        # trust_remote_code=False: a processor config naming custom code is refused, never
        # run (left unset, transformers asks "run the custom code? [y/N]" on a terminal)
        return AutoImageProcessor.from_pretrained(
            folder, local_files_only=True, backend="pil", trust_remote_code=False
        )
    except CheckpointError:
        raise
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{folder}: the image processor could not be loaded ({reason[:300]})"
        ) from None


def _load_oneformer_processor(folder: Path) -> Any:
    """OneFormerProcessor (image processor + tokenizer) without touching the network.

    OneFormer's image processor reads thing/stuff metadata from ``class_info_file`` in
    ``repo_path`` (a hub dataset, ``shi-labs/oneformer_demo``, for the official models)
    every time it is built. Look for that file in the checkpoint folder, then in the HF
    cache; if the saved config already carries the parsed ``metadata``, no file is needed.
    """
    from transformers import OneFormerProcessor

    config = oneformer_image_processor_config(folder)
    class_info_file = config.get("class_info_file")
    overrides: dict[str, Any] = {}
    if class_info_file:
        local = _find_class_info(folder, config.get("repo_path"), class_info_file)
        if local is not None:
            overrides["repo_path"] = str(local.parent)
            overrides["class_info_file"] = local.name
        elif config.get("metadata"):
            overrides["class_info_file"] = None
        else:
            raise CheckpointError(
                f"{folder}: OneFormer class info file {class_info_file!r} not found; copy it into the checkpoint folder"
            )
    processor = OneFormerProcessor.from_pretrained(
        folder, local_files_only=True, backend="pil", trust_remote_code=False, **overrides
    )
    if class_info_file:
        # post-processing tests the file *name* ("ade20k" in class_info_file): keep the original
        processor.image_processor.class_info_file = class_info_file
    return processor


def oneformer_image_processor_config(folder: Path) -> dict:
    """The image-processor settings of a OneFormer folder (``{}`` when it has none)."""
    for name in PROCESSOR_FILES:
        path = folder / name
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                raise CheckpointError(
                    f"{folder}: {name} is not valid JSON ({err}); re-save the processor"
                ) from None
            if isinstance(data.get("image_processor"), dict):
                return data["image_processor"]
            if name == "preprocessor_config.json":
                return data
    return {}


def _find_class_info(folder: Path, repo_path: str | None, class_info_file: str) -> Path | None:
    name = Path(class_info_file).name
    if (folder / name).is_file():
        return folder / name
    if repo_path and (Path(repo_path) / class_info_file).is_file():
        return Path(repo_path) / class_info_file
    if repo_path and "/" in repo_path and not Path(repo_path).is_absolute():
        from huggingface_hub import hf_hub_download

        try:
            return Path(
                hf_hub_download(
                    repo_path, class_info_file, repo_type="dataset", local_files_only=True
                )
            )
        except Exception:  # not cached: the caller decides whether that is fatal
            return None
    return None
