"""The files written for one segmentation result, by the app and the CLI alike.

For an output name ``NAME`` (the CLI: the image's file stem; the app: the task):

* ``NAME_labels.png``: the label map at the image's full resolution, as a grey PNG. Class
  ids for semantic; segment ids ``1..n`` for instance/panoptic (0 = no segment). One
  bit-depth rule (:func:`label_map_image`): 8-bit when every id the map can hold is at
  most 255, else 16-bit. The ids it can hold are the model's class ids for semantic (so
  every map of one model has the same format) and the result's segment ids otherwise.
* ``NAME_segments.json``: ``{"image": file name or null, "model": model id, "task",
  "height", "width", "segments": [...]}`` (:meth:`SegmentationResult.to_json`), indented
  by one space, UTF-8, ending in a newline.
* ``NAME_overlay.png`` (CLI only; the app shows it instead): :func:`segdemo.render.render`.

Equal inputs give byte-identical files, whichever front end wrote them. Each file is
written atomically (a hidden temporary file in the same folder, then a rename): a killed
run leaves whole files or none, so ``predict --skip-existing`` can trust what exists.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from segdemo.errors import SegdemoError
from segdemo.result import SegmentationResult, Task

LABELS_SUFFIX = "_labels.png"
SEGMENTS_SUFFIX = "_segments.json"
OVERLAY_SUFFIX = "_overlay.png"


class LabelMapError(SegdemoError):
    """A label map whose ids do not fit a 16-bit PNG."""


@dataclass(frozen=True)
class ResultFiles:
    """Paths of the files written for one result (``overlay`` is None when not written)."""

    labels: Path
    segments: Path
    overlay: Path | None = None


def largest_id(result: SegmentationResult) -> int:
    """The largest id ``result.label_map`` can hold: the model's largest class id for
    semantic results, the largest segment id for instance/panoptic ones."""
    top = int(result.label_map.max()) if result.label_map.size else 0
    if result.task is Task.SEMANTIC:
        return max(top, max(result.id2label, default=0))
    return max(top, max((s.id for s in result.segments), default=0))


def label_map_image(label_map: np.ndarray, largest: int | None = None) -> Image.Image:
    """``HxW`` integer ids as a grey PIL image: mode ``"L"`` (8-bit) when ``largest`` (default:
    the map's own maximum) is at most 255, else ``"I;16"``.

    Raises:
        LabelMapError: ids above 65535.
    """
    top = int(label_map.max()) if label_map.size else 0
    largest = max(top, top if largest is None else int(largest))
    if largest <= 255:
        return Image.fromarray(label_map.astype(np.uint8))
    if largest <= 65535:
        return Image.fromarray(label_map.astype(np.uint16))
    raise LabelMapError(f"the label map holds id {largest}, too large for a 16-bit PNG")


def save_label_map(
    label_map: np.ndarray, path: str | os.PathLike, largest: int | None = None
) -> Path:
    """Write :func:`label_map_image` as PNG to ``path``; returns ``path``."""
    path = Path(path)
    image = label_map_image(label_map, largest)
    _write_atomically(path, lambda temp: image.save(temp, format="PNG"))
    return path


def _write_atomically(path: Path, write) -> None:
    """``write(temp)`` then rename ``temp`` to ``path``: readers never see a partial file."""
    # unique per process and thread: concurrent writers of one name never share a temp file
    temp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        write(temp)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def segments_summary(
    result: SegmentationResult, *, model_id: str, image_name: str | None = None
) -> dict:
    """The content of ``NAME_segments.json`` (see the module docstring)."""
    image = Path(image_name).name if image_name else None
    return {"image": image, "model": model_id, **result.to_json()}


def write_result_files(
    out_dir: str | os.PathLike,
    name: str,
    result: SegmentationResult,
    *,
    model_id: str,
    image_name: str | None = None,
    overlay: np.ndarray | None = None,
) -> ResultFiles:
    """Write ``NAME_labels.png``, ``NAME_segments.json`` and, given ``overlay`` (``HxWx3``
    uint8 RGB from :func:`segdemo.render.render`), ``NAME_overlay.png`` into ``out_dir``.

    Args:
        out_dir: an existing folder.
        name: the output name ``NAME``: a plain file name part, no folders.
        result: the full-resolution result.
        model_id: recorded in the JSON.
        image_name: the input's file name, recorded in the JSON (its folders are dropped).
        overlay: the rendered overlay to save, or None.

    Raises:
        LabelMapError: ids above 65535.
    """
    folder = Path(out_dir)
    if Path(name).name != name or name in ("", ".", ".."):
        raise ValueError(f"output name {name!r} must be a plain file name part")
    labels = save_label_map(result.label_map, folder / f"{name}{LABELS_SUFFIX}", largest_id(result))
    segments = folder / f"{name}{SEGMENTS_SUFFIX}"
    summary = segments_summary(result, model_id=model_id, image_name=image_name)
    text = json.dumps(summary, indent=1) + "\n"
    _write_atomically(segments, lambda temp: temp.write_text(text, encoding="utf-8"))
    overlay_path = None
    if overlay is not None:
        overlay_path = folder / f"{name}{OVERLAY_SUFFIX}"
        picture = Image.fromarray(overlay)
        _write_atomically(overlay_path, lambda temp: picture.save(temp, format="PNG"))
    return ResultFiles(labels, segments, overlay_path)
