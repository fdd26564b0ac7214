"""``python -m segdemo convert semantic-to-panoptic``: a semantic folder dataset as COCO panoptic.

    python -m segdemo convert semantic-to-panoptic --data-dir ../shared/datasets/camvid \\
        --things car,pedestrian,bicyclist --ignore-index 11 --min-area 64 --out camvid-panoptic

Input is the semantic folder layout of :mod:`segdemo.data` (``DIR/id2label.json``,
``DIR/{train,val}/{images,annotations}``); output is the COCO panoptic layout that
:mod:`segdemo.coco` reads::

    OUT/{train,val}/images/NAME.jpg      hard links to the inputs (copies across file systems)
    OUT/{train,val}/panoptic/NAME.png    RGB, segment id = R + 256*G + 256**2*B, 0 = void
    OUT/{train,val}/panoptic.json        images, annotations (segments_info), categories

Rules (:func:`semantic_to_panoptic`): every stuff class present in an image is one
segment; every 8-connected component of a thing class is one instance; thing components
under ``min_area`` pixels and the ``ignore_index`` class become void.

Category ids are the semantic class ids themselves (0-based: CamVid's ``car`` is
category 8), so the panoptic model's class ids equal the semantic model's. The output is
written to ``OUT.tmp`` and renamed to ``OUT`` at the end: an ``OUT`` that exists is complete.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from segdemo.data import (
    DatasetError,
    Pair,
    check_label_range,
    find_pairs,
    find_val_pairs,
    read_annotation,
    read_id2label,
)
from segdemo.labels import IGNORE_INDEX, to_train_ids

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
"""``scipy.ndimage.label`` structure: diagonal neighbours belong to the same instance."""

_MARKER = ".segdemo-convert"  # marks an OUT.tmp folder as ours, so a rerun may delete it


# --------------------------------------------------------------------------- the pure part


def semantic_to_panoptic(
    label_map: np.ndarray,
    thing_ids: Iterable[int],
    *,
    ignore_index: int | None,
    min_area: int,
) -> tuple[np.ndarray, list[dict]]:
    """Split a class-id map into panoptic segments.

    Args:
        label_map: ``HxW`` integer class ids (raw or train ids; any non-negative integer dtype).
        thing_ids: class ids whose connected components are instances; all other classes
            are stuff.
        ignore_index: class id that is void (no segment); ``None`` for none.
        min_area: thing components with fewer pixels become void (stuff is never dropped).

    Returns:
        ``(segment_map, segments)``: ``HxW int32`` segment ids, ``0`` = void; and one dict per
        segment, in id order, ``{"id", "category_id", "iscrowd": 0, "area", "bbox"}`` with
        ``category_id`` = the class id and ``bbox`` = ``[x, y, width, height]`` (COCO).
        Ids are ``1..n``: stuff classes by ascending class id first, then the instances of each
        thing class (ascending class id) in raster order of their first pixel.
    """
    labels = np.asarray(label_map)
    if labels.ndim != 2:
        raise ValueError(f"label_map must be HxW, got shape {labels.shape}")
    things = {int(t) for t in thing_ids}
    segment_map = np.zeros(labels.shape, np.int32)
    segments: list[dict] = []
    classes = [int(c) for c in np.unique(labels) if ignore_index is None or c != ignore_index]
    stuff = [c for c in classes if c not in things]
    for class_id in stuff + [c for c in classes if c in things]:
        mask = labels == class_id
        if class_id not in things:
            _add_segment(segment_map, segments, mask, class_id, _bbox(mask))
            continue
        components, count = ndimage.label(mask, structure=EIGHT_CONNECTED)
        areas = np.bincount(components.ravel(), minlength=count + 1)
        for index, window in enumerate(ndimage.find_objects(components), start=1):
            if window is None or areas[index] < min_area:
                continue
            component = np.zeros(labels.shape, bool)
            component[window] = components[window] == index
            ys, xs = window
            box = [xs.start, ys.start, xs.stop - xs.start, ys.stop - ys.start]
            _add_segment(segment_map, segments, component, class_id, box)
    return segment_map, segments


def _add_segment(
    segment_map: np.ndarray, segments: list[dict], mask: np.ndarray, class_id: int, bbox: list
) -> None:
    segment_id = len(segments) + 1
    segment_map[mask] = segment_id
    segments.append(
        {
            "id": segment_id,
            "category_id": class_id,
            "iscrowd": 0,
            "area": int(mask.sum()),
            "bbox": [int(v) for v in bbox],
        }
    )


def _bbox(mask: np.ndarray) -> list[int]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def segment_ids_to_rgb(segment_map: np.ndarray) -> np.ndarray:
    """``HxW`` segment ids (``< 256**3``) -> ``HxWx3 uint8`` with id = R + 256*G + 256**2*B."""
    ids = np.asarray(segment_map).astype(np.uint32)
    return np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255], axis=-1).astype(np.uint8)


# --------------------------------------------------------------------------- folders


@dataclass
class ConvertSummary:
    """What :func:`convert_folder` wrote: counts per split (``train``, ``val``)."""

    out: Path
    images: dict[str, int] = field(default_factory=dict)
    segments: dict[str, int] = field(default_factory=dict)
    instances: dict[str, dict[str, int]] = field(default_factory=dict)
    """``{split: {thing name: number of instances}}``."""
    seconds: float = 0.0

    def line(self) -> str:
        """One line: images, segments and thing instances, per split."""
        parts = []
        for split, n_images in self.images.items():
            things = ", ".join(f"{name} {n}" for name, n in self.instances[split].items())
            parts.append(
                f"{split}: {n_images} images, {self.segments[split]} segments, things: {things}"
            )
        return f"wrote {self.out} in {self.seconds:.1f} s ({'; '.join(parts)})"


def convert_folder(
    data_dir: str | os.PathLike,
    out: str | os.PathLike,
    things: list[str],
    *,
    ignore_index: int | None = None,
    min_area: int = 64,
    workers: int | None = None,
) -> ConvertSummary:
    """Convert a semantic folder dataset to the COCO panoptic layout (see the module docstring).

    Args:
        data_dir: semantic dataset root (``id2label.json``, ``train/``, optional ``val/``).
        out: output folder; must not exist yet. A missing val split stays missing
            (the reader carves one).
        things: class names (from ``id2label.json``) that are countable things.
        ignore_index: raw annotation value meaning void (CamVid: 11); raw 255 is always void.
        min_area: thing components with fewer pixels become void.
        workers: threads (default: up to 4).

    Raises:
        DatasetError: unknown thing names (the message lists the classes), ``out`` exists,
            an unreadable annotation, one whose size differs from its image, or a value that
            is no class.
    """
    started = time.perf_counter()
    root, out = Path(data_dir), Path(out)
    if not root.is_dir():
        raise DatasetError(f"{root}: data folder not found; pass --data-dir DIR with DIR/train")
    id2label = read_id2label(root)
    label2id = {name: class_id for class_id, name in id2label.items()}
    unknown = [name for name in things if name not in label2id]
    if unknown or not things:
        raise DatasetError(
            f"{root / 'id2label.json'}: unknown thing class {', '.join(unknown) or '(none given)'}; "
            f"the classes are: {', '.join(id2label.values())}"
        )
    if min_area < 0:
        raise DatasetError(f"--min-area must be >= 0, got {min_area}")
    if out.exists():
        raise DatasetError(f"{out}: already exists; remove it or choose another --out")
    thing_ids = sorted(label2id[name] for name in things)
    splits = {"train": find_pairs(root, "train")}
    splits["val"] = find_val_pairs(root)
    if not splits["train"]:
        raise DatasetError(f"{root / 'train'}: no image/annotation pairs to convert")

    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        if not (tmp / _MARKER).exists():
            raise DatasetError(f"{tmp}: exists and is not a conversion in progress; remove it")
        shutil.rmtree(tmp)  # a conversion that was killed half-way
    tmp.mkdir(parents=True)
    (tmp / _MARKER).write_text("incomplete conversion; safe to delete\n")
    categories = [
        {"id": class_id, "name": name, "isthing": int(class_id in thing_ids), "supercategory": ""}
        for class_id, name in sorted(id2label.items())
        if class_id != ignore_index
    ]
    summary = ConvertSummary(out)
    for split, pairs in splits.items():
        if not pairs:
            continue
        convert = _PairConverter(tmp / split, len(id2label), thing_ids, ignore_index, min_area)
        with ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1)) as pool:
            records = list(pool.map(convert, range(1, len(pairs) + 1), pairs))
        images = [image for image, _ in records]
        annotations = [annotation for _, annotation in records]
        document = {"images": images, "annotations": annotations, "categories": categories}
        (tmp / split / "panoptic.json").write_text(json.dumps(document), encoding="utf-8")
        summary.images[split] = len(images)
        summary.segments[split] = sum(len(a["segments_info"]) for a in annotations)
        counts = {id2label[t]: 0 for t in thing_ids}
        for annotation in annotations:
            for segment in annotation["segments_info"]:
                if segment["category_id"] in thing_ids:
                    counts[id2label[segment["category_id"]]] += 1
        summary.instances[split] = counts
    (tmp / _MARKER).unlink()
    tmp.rename(out)
    summary.seconds = time.perf_counter() - started
    return summary


class _PairConverter:
    """Converts one pair: writes the image link and panoptic PNG, returns the JSON records."""

    def __init__(self, split_dir, num_labels, thing_ids, ignore_index, min_area):
        self.split_dir = split_dir
        self.num_labels = num_labels
        self.thing_ids = thing_ids
        self.ignore_index = ignore_index
        self.min_area = min_area
        (split_dir / "images").mkdir(parents=True)
        (split_dir / "panoptic").mkdir()

    def __call__(self, image_id: int, pair: Pair) -> tuple[dict, dict]:
        raw = read_annotation(pair.annotation, name=str(pair.annotation))
        labels = to_train_ids(raw, ignore_index=self.ignore_index)
        check_label_range(labels, raw, self.num_labels, str(pair.annotation))
        try:
            with Image.open(pair.image) as image:  # the header only: no decoding
                width, height = image.size
        except (OSError, SyntaxError, ValueError) as err:
            raise DatasetError(f"{pair.image}: cannot read the image ({err})") from None
        if (height, width) != labels.shape:
            raise DatasetError(
                f"{pair.annotation}: annotation is {labels.shape[1]}x{labels.shape[0]} but its image "
                f"is {width}x{height}; annotations must have the image's size"
            )
        segment_map, segments = semantic_to_panoptic(
            labels, self.thing_ids, ignore_index=IGNORE_INDEX, min_area=self.min_area
        )
        image_name = pair.name + pair.image.suffix.lower()
        _link_or_copy(pair.image, self.split_dir / "images" / image_name)
        png_name = pair.name + ".png"
        Image.fromarray(segment_ids_to_rgb(segment_map)).save(
            self.split_dir / "panoptic" / png_name, compress_level=1
        )
        image = {"id": image_id, "file_name": image_name, "width": width, "height": height}
        annotation = {"image_id": image_id, "file_name": png_name, "segments_info": segments}
        return image, annotation


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source, target)


# --------------------------------------------------------------------------- command line


def add_convert_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``convert semantic-to-panoptic`` on the ``python -m segdemo`` subparsers (sets ``run``)."""
    parser = subparsers.add_parser(
        "convert",
        help="convert datasets between layouts (semantic-to-panoptic)",
        description="Convert datasets between layouts.",
    )
    kinds = parser.add_subparsers(dest="conversion", required=True, metavar="CONVERSION")
    panoptic = kinds.add_parser(
        "semantic-to-panoptic",
        help="a semantic folder dataset as COCO panoptic (things = connected components)",
        description=__doc__.split("\n\n")[0],
    )
    panoptic.add_argument(
        "--data-dir", required=True, help="DIR with id2label.json and SPLIT/{images,annotations}"
    )
    panoptic.add_argument(
        "--things",
        required=True,
        help="comma-separated class names that are countable things, e.g. car,pedestrian",
    )
    panoptic.add_argument(
        "--ignore-index",
        type=int,
        default=None,
        help="raw annotation value meaning void, e.g. 11 for CamVid (255 is always void)",
    )
    panoptic.add_argument(
        "--min-area",
        type=int,
        default=64,
        help="thing components with fewer pixels become void (default: 64)",
    )
    panoptic.add_argument("--out", required=True, help="output folder (must not exist)")
    panoptic.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Convert and print the one-line summary. Returns 0, or 2 with a one-line error."""
    things = [name.strip() for name in args.things.split(",") if name.strip()]
    try:
        summary = convert_folder(
            args.data_dir, args.out, things, ignore_index=args.ignore_index, min_area=args.min_area
        )
    except (DatasetError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(summary.line())
    return 0
