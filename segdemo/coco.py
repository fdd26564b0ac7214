"""Instance and panoptic ground truth: COCO panoptic folders, COCO instances JSON, 🤗 datasets.

Three inputs become one :class:`UniversalSource` (``source[i] -> (RGB PIL image, Target)``):

* COCO panoptic (``task="panoptic"``, or ``"instance"`` using its things only)::

      DIR/{train,val}/images/NAME.jpg|png
      DIR/{train,val}/panoptic/NAME.png    RGB, segment id = R + 256*G + 256**2*B, 0 = void
      DIR/{train,val}/panoptic.json        images, annotations[].segments_info, categories

* COCO instances (``task="instance"``; what CVAT, Label Studio and Roboflow export)::

      DIR/{train,val}/instances.json       polygons or RLE (compressed or not), iscrowd
      DIR/{train,val}/images/...           file_name is relative to images/ (else to the split)

* a 🤗 ``datasets`` hub id or ``save_to_disk`` folder (``task="instance"``) in the format of
  transformers' ``examples/pytorch/instance-segmentation``: an ``image`` column and an
  ``annotation`` column, RGB with R = class id and G = instance id (G = 0: no instance).
  Class names come from a ``semantic_class_to_id`` column ({name: id}) or the folder's
  ``id2label.json``.

Conventions: model class ids are the categories' positions after sorting by COCO ``id``
(only the things when ``things_only``); ``id2label`` comes from their names and
``thing_ids`` from ``isthing`` (every category of an instances JSON or a 🤗 dataset is a
thing). A missing val split is carved from train as :func:`segdemo.data.carve` does.

JSON-level problems (unknown ``category_id``, an image without annotation or the reverse,
a polygon outside its image, a missing file) raise :class:`~segdemo.data.DatasetError` in
:func:`load_universal`; pixel-level ones (unreadable files, a PNG id missing from
``segments_info``, sizes that differ) in ``source[i]``, and :func:`validate_universal` reads
every sample once before training. Every message is one line naming the file.

    >>> splits = load_universal("panoptic", data_dir="/tmp/camvid-panoptic")
    >>> validate_universal(splits, "panoptic")
    >>> image, target = splits.val[0]       # target.masks: (N, H, W) bool
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from segdemo.data import (
    IMAGE_SUFFIXES,
    VAL_SPLITS,
    DatasetError,
    Source,
    carve,
    open_hf_splits,
    read_id2label,
    sum_over_samples,
)
from segdemo.images import ImageError, load_image

TASKS = ("instance", "panoptic")
POLYGON_SLACK = 1.0
"""Pixels a polygon vertex may lie outside its image (annotation tools round outwards)."""


@dataclass(frozen=True)
class Target:
    """Ground truth of one image at its own resolution.

    ``masks`` ``(N, H, W) bool``, one per segment (instances of a COCO instances JSON may
    overlap; a segment listed in the JSON without pixels keeps an all-False mask, which
    PQ and AP count as missed); ``class_ids`` ``(N,) int64`` model class ids ``0..C-1``;
    ``iscrowd`` ``(N,) bool`` (crowd regions: not trained on, ignored by PQ and AP);
    ``segment_ids`` ``(N,) int64`` the annotation's own ids (panoptic PNG id, COCO ann id,
    or R + 256*G for a 🤗 dataset).
    """

    masks: np.ndarray
    class_ids: np.ndarray
    iscrowd: np.ndarray
    segment_ids: np.ndarray

    @classmethod
    def build(cls, masks: Sequence[np.ndarray], class_ids, iscrowd, segment_ids, shape) -> Target:
        """Stack lists into a Target of size ``shape`` (``(H, W)``), also when empty."""
        stacked = np.stack(masks).astype(bool) if len(masks) else np.zeros((0, *shape), bool)
        return cls(
            stacked,
            np.asarray(class_ids, np.int64).reshape(-1),
            np.asarray(iscrowd, bool).reshape(-1),
            np.asarray(segment_ids, np.int64).reshape(-1),
        )

    def panoptic_map(self) -> tuple[np.ndarray, dict[int, tuple[int, bool]]]:
        """``(HxW int32 segment ids, 0 = void; {segment_id: (class_id, iscrowd)})`` -- for PQ.

        Uses ``segment_ids`` when they are unique and in ``1..2**31-1``, else ``1..N``.
        Overlapping masks (instances JSON only): the later segment wins the pixel.
        """
        n = len(self.masks)
        ids = self.segment_ids
        if len(set(ids.tolist())) != n or (n and (ids.min() < 1 or ids.max() >= 2**31)):
            ids = np.arange(1, n + 1, dtype=np.int64)
        segment_map = np.zeros(self.masks.shape[1:], np.int32)
        for mask, segment_id in zip(self.masks, ids, strict=True):
            segment_map[mask] = segment_id
        info = {
            int(s): (int(c), bool(crowd))
            for s, c, crowd in zip(ids, self.class_ids, self.iscrowd, strict=True)
        }
        return segment_map, info


class UniversalSource(Source):
    """``source[i] -> (RGB PIL image, Target)``; ``names`` the samples' keys, unique (COCO:
    ``file_name`` without suffix; 🤗 rows: ``TITLE[i]``), :meth:`name` the file or row to
    name in messages."""

    names: list[str]

    def __len__(self) -> int:
        return len(self.names)

    def key(self, index: int) -> str:
        return self.names[index]


@dataclass(frozen=True)
class UniversalSplits:
    """What an instance/panoptic run reads: train and val sources, class names, thing ids."""

    train: Source  # of (image, Target): a UniversalSource or a Subset/Concat of them
    val: Source
    id2label: dict[int, str]
    thing_ids: frozenset[int]  # stuff = the other ids
    val_carved: bool = False


# --------------------------------------------------------------------------- COCO panoptic


@dataclass(frozen=True)
class _PanopticRecord:
    name: str
    image: Path
    png: Path
    segments: tuple[tuple[int, int, bool], ...]  # (segment id, model class id or -1, iscrowd)


class _ListedSource(UniversalSource):
    """A split listed in a COCO JSON: one record per image (``name``, ``image`` path)."""

    def __init__(self, json_path: Path, records: list):
        self.json_path = json_path
        self.records = records
        self.names = [r.name for r in records]

    def name(self, index: int) -> str:
        return str(self.records[index].image)


class PanopticSource(_ListedSource):
    """A COCO panoptic split; segments of categories left out (``-1``) become void."""

    def __getitem__(self, index: int) -> tuple[Image.Image, Target]:
        record = self.records[index]
        image = _load(record.image)
        ids = read_segment_ids(record.png)
        if ids.shape != (image.height, image.width):
            raise DatasetError(
                f"{record.png}: PNG is {ids.shape[1]}x{ids.shape[0]} but its image is "
                f"{image.width}x{image.height}; they must have the same size"
            )
        listed = np.array([s for s, _, _ in record.segments], np.int64)
        # one comparison per listed segment: np.unique would sort all ~170k ids (slower)
        masks = ids[None] == listed[:, None, None]
        unlisted = (ids != 0) & ~masks.any(0)
        if unlisted.any():
            raise DatasetError(
                f"{record.png}: segment id {int(ids[unlisted][0])} is in the PNG but not in the "
                f"segments_info of {record.png.name} in {self.json_path}; add it or paint it 0 (void)"
            )
        keep = [i for i, (_, class_id, _) in enumerate(record.segments) if class_id >= 0]
        kept = [record.segments[i] for i in keep]
        masks = masks[keep]
        target = Target.build(
            masks,
            [c for _, c, _ in kept],
            [k for _, _, k in kept],
            [s for s, _, _ in kept],
            ids.shape,
        )
        return image, target


def read_segment_ids(path: Path) -> np.ndarray:
    """A panoptic PNG as ``HxW int64`` segment ids (RGB: R + 256*G + 256**2*B; grey: the value)."""
    try:
        with Image.open(path) as png:
            png.load()
            if png.mode == "P":
                png = png.convert("RGB")
            array = np.asarray(png)
    except FileNotFoundError:
        raise DatasetError(
            f"{path}: panoptic PNG not found; add it or remove its annotation"
        ) from None
    except (OSError, SyntaxError, ValueError) as err:
        raise DatasetError(f"{path}: cannot read the panoptic PNG ({err}); re-export it") from None
    if array.ndim == 3:
        rgb = array[..., :3].astype(np.int64)
        return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
    return array.astype(np.int64)


def _read_panoptic(split_dir: Path, things_only: bool, categories: list | None):
    json_path = split_dir / "panoptic.json"
    doc = _read_json(json_path, ("images", "annotations", "categories"))
    if categories is not None and _category_key(doc["categories"]) != _category_key(categories):
        raise DatasetError(
            f"{json_path}: categories differ from the train split's; both splits need the same categories"
        )
    by_id = _categories(json_path, doc["categories"], require_isthing=True)
    kept = sorted(c for c, (_, isthing) in by_id.items() if isthing or not things_only)
    to_class = {category_id: kept.index(category_id) for category_id in kept}
    images = _images(json_path, doc["images"], split_dir / "images")
    annotations: dict[Any, dict] = {}
    for annotation in doc["annotations"]:
        image_id = annotation.get("image_id") if isinstance(annotation, dict) else None
        if image_id not in images:
            raise DatasetError(
                f"{json_path}: annotation {annotation.get('file_name') if isinstance(annotation, dict) else annotation!r} "
                f"has image_id {image_id!r}, which is not in images; add the image or remove the annotation"
            )
        if image_id in annotations:
            raise DatasetError(f"{json_path}: image_id {image_id!r} has two annotations; keep one")
        annotations[image_id] = annotation
    records = []
    for image_id, (name, image_path) in images.items():
        annotation = annotations.get(image_id)
        if annotation is None:
            raise DatasetError(
                f"{image_path}: image has no annotation in {json_path}; add one or remove the image"
            )
        png_name = annotation.get("file_name") or f"{Path(name).name}.png"
        segments, seen = [], set()
        for info in annotation.get("segments_info", []):
            segment_id, category_id = info.get("id"), info.get("category_id")
            if not isinstance(segment_id, int) or segment_id <= 0 or segment_id in seen:
                raise DatasetError(
                    f"{json_path}: {png_name} has segment id {segment_id!r}; ids must be unique integers > 0"
                )
            if category_id not in by_id:
                raise DatasetError(
                    f"{json_path}: {png_name} segment {segment_id} has unknown category_id "
                    f"{category_id!r}; the categories are {sorted(by_id)}"
                )
            seen.add(segment_id)
            segments.append(
                (segment_id, to_class.get(category_id, -1), bool(info.get("iscrowd", 0)))
            )
        png = split_dir / "panoptic" / png_name
        if not png.is_file():
            raise DatasetError(f"{png}: panoptic PNG not found (listed in {json_path}); add it")
        records.append(_PanopticRecord(name, image_path, png, tuple(segments)))
    _refuse_unlisted(split_dir / "images", {r.image for r in records}, json_path)
    _refuse_unlisted(split_dir / "panoptic", {r.png for r in records}, json_path, what="PNG")
    id2label = {to_class[c]: by_id[c][0] for c in kept}
    thing_ids = frozenset(to_class[c] for c in kept if by_id[c][1])
    return PanopticSource(json_path, records), id2label, thing_ids, doc["categories"]


# --------------------------------------------------------------------------- COCO instances


@dataclass(frozen=True)
class _InstanceRecord:
    name: str
    image: Path
    height: int
    width: int
    annotations: tuple[tuple[int, int, bool, Any], ...]  # (ann id, class id, iscrowd, segmentation)


class InstancesSource(_ListedSource):
    """A COCO instances split; masks decoded by ``pycocotools.mask`` at the JSON's size."""

    def __getitem__(self, index: int) -> tuple[Image.Image, Target]:
        from pycocotools import mask as mask_utils

        record = self.records[index]
        image = _load(record.image)
        if (image.height, image.width) != (record.height, record.width):
            raise DatasetError(
                f"{record.image}: image is {image.width}x{image.height} but {self.json_path} says "
                f"{record.width}x{record.height}; fix width/height in the JSON"
            )
        h, w = record.height, record.width
        masks = []
        for _, _, _, segmentation in record.annotations:
            if isinstance(segmentation, list):  # polygons: one object, maybe in several parts
                rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, h, w))
            elif isinstance(segmentation["counts"], list):  # uncompressed RLE
                rle = mask_utils.frPyObjects(segmentation, h, w)
            else:  # compressed RLE (str or bytes)
                rle = segmentation
            masks.append(mask_utils.decode(rle).astype(bool))
        annotations = record.annotations
        target = Target.build(
            masks,
            [a[1] for a in annotations],
            [a[2] for a in annotations],
            [a[0] for a in annotations],
            (h, w),
        )
        return image, target


def _read_instances(split_dir: Path, categories: list | None):
    json_path = split_dir / "instances.json"
    doc = _read_json(json_path, ("images", "annotations", "categories"))
    if categories is not None and _category_key(doc["categories"]) != _category_key(categories):
        raise DatasetError(
            f"{json_path}: categories differ from the train split's; both splits need the same categories"
        )
    by_id = _categories(json_path, doc["categories"], require_isthing=False)
    to_class = {category_id: i for i, category_id in enumerate(sorted(by_id))}
    image_dir = split_dir / "images" if (split_dir / "images").is_dir() else split_dir
    images = _images(json_path, doc["images"], image_dir, need_size=True)
    per_image: dict[Any, list] = {image_id: [] for image_id in images}
    for ann in doc["annotations"]:
        if not isinstance(ann, dict):
            raise DatasetError(f"{json_path}: annotations must be objects, got {ann!r:.60}")
        ann_id, image_id = ann.get("id"), ann.get("image_id")
        if image_id not in images:
            raise DatasetError(
                f"{json_path}: annotation {ann_id!r} has image_id {image_id!r}, which is not in images; "
                "add the image or remove the annotation"
            )
        if ann.get("category_id") not in by_id:
            raise DatasetError(
                f"{json_path}: annotation {ann_id!r} has unknown category_id {ann.get('category_id')!r}; "
                f"the categories are {sorted(by_id)}"
            )
        name, _, (h, w) = images[image_id]
        _check_segmentation(json_path, ann_id, name, ann.get("segmentation"), h, w)
        per_image[image_id].append(
            (
                int(ann_id) if isinstance(ann_id, int) else len(per_image[image_id]) + 1,
                to_class[ann["category_id"]],
                bool(ann.get("iscrowd", 0)),
                ann["segmentation"],
            )
        )
    records = [
        _InstanceRecord(name, path, h, w, tuple(per_image[image_id]))
        for image_id, (name, path, (h, w)) in images.items()
    ]
    _refuse_unlisted(image_dir, {r.image for r in records}, json_path)
    id2label = {to_class[c]: by_id[c][0] for c in by_id}
    return InstancesSource(json_path, records), id2label, frozenset(id2label), doc["categories"]


def _check_segmentation(json_path: Path, ann_id, name: str, seg: Any, h: int, w: int) -> None:
    where = f"{json_path}: annotation {ann_id!r} ({name})"
    if isinstance(seg, dict):
        if "counts" not in seg or list(seg.get("size", [])) != [h, w]:
            raise DatasetError(
                f"{where}: RLE needs counts and size [height, width] = [{h}, {w}], got size {seg.get('size')!r}"
            )
        return
    if not isinstance(seg, list) or not seg:
        raise DatasetError(
            f"{where}: has no segmentation (polygons or RLE); instance training needs masks"
        )
    for polygon in seg:
        if not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2:
            raise DatasetError(
                f"{where}: a polygon needs at least 3 points as [x1, y1, x2, y2, ...], got {polygon!r:.60}"
            )
        xy = np.asarray(polygon, np.float64).reshape(-1, 2)
        if (
            (xy < -POLYGON_SLACK).any()
            or (xy[:, 0] > w + POLYGON_SLACK).any()
            or (xy[:, 1] > h + POLYGON_SLACK).any()
        ):
            raise DatasetError(
                f"{where}: polygon point {xy[(xy < -POLYGON_SLACK).any(1) | (xy[:, 0] > w + POLYGON_SLACK) | (xy[:, 1] > h + POLYGON_SLACK)][0].tolist()} "
                f"is outside the {w}x{h} image; polygons are in pixels of the image, clip it"
            )


# --------------------------------------------------------------------------- 🤗 datasets


class HFUniversalSource(UniversalSource):
    """Rows of a 🤗 dataset: ``image`` + ``annotation`` (R = class id, G = instance id, 0 = none)."""

    def __init__(self, table: Any, title: str, num_labels: int):
        missing = [c for c in ("image", "annotation") if c not in table.column_names]
        if missing:
            raise DatasetError(
                f"{title}: needs the columns image and annotation (R = class id, G = instance id), "
                f"found {list(table.column_names)}"
            )
        self.table = table
        self.title = title
        self.num_labels = num_labels
        self.names = [f"{title}[{i}]" for i in range(len(table))]

    def name(self, index: int) -> str:
        return self.names[index]

    def __getitem__(self, index: int) -> tuple[Image.Image, Target]:
        row = self.table[int(index)]
        name = self.names[index]
        try:
            image = load_image(_as_pil(row["image"]), name=name)
        except ImageError as err:
            raise DatasetError(str(err)) from None
        annotation = np.asarray(_as_pil(row["annotation"]))
        if annotation.ndim != 3 or annotation.shape[2] < 2:
            raise DatasetError(
                f"{name}.annotation: needs RGB with R = class id and G = instance id, got shape {annotation.shape}"
            )
        if annotation.shape[:2] != (image.height, image.width):
            raise DatasetError(
                f"{name}.annotation: is {annotation.shape[1]}x{annotation.shape[0]} but the image is "
                f"{image.width}x{image.height}"
            )
        keys = annotation[..., 0].astype(np.int64) + 256 * annotation[..., 1].astype(np.int64)
        present, inverse = np.unique(keys, return_inverse=True)
        inverse = inverse.reshape(keys.shape)
        segments = [(i, int(k)) for i, k in enumerate(present) if k >= 256]  # G > 0
        bad = [k & 255 for _, k in segments if (k & 255) >= self.num_labels]
        if bad:
            raise DatasetError(
                f"{name}.annotation: class id {bad[0]} (R) is not one of the {self.num_labels} classes"
            )
        target = Target.build(
            [inverse == i for i, _ in segments],
            [k & 255 for _, k in segments],
            [False] * len(segments),
            [k for _, k in segments],
            keys.shape,
        )
        return image, target


def _as_pil(value: Any) -> Image.Image:
    return value if isinstance(value, Image.Image) else Image.fromarray(np.asarray(value))


def _read_hf(name_or_path: str, val_fraction: float, seed: int) -> UniversalSplits:
    train_table, val_table = open_hf_splits(name_or_path)
    parts = {"train": train_table, "val": val_table}
    local = Path(name_or_path)
    id2label = _hf_id2label(name_or_path, local, parts["train"])
    train = HFUniversalSource(parts["train"], f"{name_or_path}[train]", len(id2label))
    if len(train) == 0:
        raise DatasetError(f"{name_or_path}[train]: the train split is empty")
    things = frozenset(id2label)
    if parts["val"] is None or len(parts["val"]) == 0:
        train_part, val_part = carve(train, val_fraction, seed)
        return UniversalSplits(train_part, val_part, id2label, things, val_carved=True)
    val = HFUniversalSource(parts["val"], f"{name_or_path}[val]", len(id2label))
    return UniversalSplits(train, val, id2label, things)


def _hf_id2label(name_or_path: str, local: Path, train: Any) -> dict[int, str]:
    if "semantic_class_to_id" in train.column_names and len(train):
        mapping = train[0]["semantic_class_to_id"]
        id2label = {int(v): str(k) for k, v in mapping.items() if v is not None}
        if sorted(id2label) != list(range(len(id2label))):
            raise DatasetError(
                f"{name_or_path}: semantic_class_to_id ids must be 0..N-1, got {sorted(id2label)}"
            )
        return id2label
    if local.exists():
        return read_id2label(local)
    from segdemo.data import _hf_id2label as hub_id2label  # the hub repo's id2label.json

    return hub_id2label(name_or_path, local)


# --------------------------------------------------------------------------- entry points


def load_universal(
    task: str,
    *,
    data_dir: str | os.PathLike | None = None,
    dataset: str | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    things_only: bool | None = None,
) -> UniversalSplits:
    """Read instance or panoptic ground truth (see the module docstring for the layouts).

    Args:
        task: ``"panoptic"`` (a COCO panoptic folder) or ``"instance"`` (``instances.json``
            when present, else the panoptic layout's things; or ``dataset``).
        data_dir: the folder; exactly one of ``data_dir`` and ``dataset``.
        dataset: a 🤗 datasets id or ``save_to_disk`` folder (instance only).
        val_fraction, seed: how a missing val split is carved from train.
        things_only: keep only ``isthing`` categories of a panoptic folder (their class ids
            become their positions among the things). Default: ``task == "instance"``.

    Raises:
        DatasetError: one line naming the file; JSON-level problems are found here.
    """
    if task not in TASKS:
        raise DatasetError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if (data_dir is None) == (dataset is None):
        raise DatasetError("pass exactly one of --data-dir and --dataset")
    if dataset is not None:
        if task != "instance":
            raise DatasetError(
                f"{dataset}: a 🤗 dataset (R = class, G = instance) has no stuff; panoptic training "
                "needs a COCO panoptic folder (--data-dir)"
            )
        return _read_hf(dataset, val_fraction, seed)
    root = Path(data_dir)
    if not (root / "train").is_dir():
        raise DatasetError(
            f"{root / 'train'}: not found; expected {root}/train/panoptic.json (+ images/, panoptic/)"
            + (" or train/instances.json (+ images/)" if task == "instance" else "")
        )
    use_instances = task == "instance" and (root / "train" / "instances.json").is_file()
    if not use_instances and not (root / "train" / "panoptic.json").is_file():
        wanted = "instances.json or panoptic.json" if task == "instance" else "panoptic.json"
        raise DatasetError(
            f"{root / 'train'}: no {wanted}; see the COCO layouts in segdemo/coco.py"
        )
    things = task == "instance" if things_only is None else things_only

    def read(split_dir: Path, categories: list | None):
        if use_instances:
            return _read_instances(split_dir, categories)
        return _read_panoptic(split_dir, things, categories)

    train, id2label, thing_ids, categories = read(root / "train", None)
    if not len(train):
        raise DatasetError(f"{root / 'train'}: no images listed; add images and annotations")
    if not id2label:
        raise DatasetError(f"{root / 'train'}: no categories to train (things_only={things})")
    val_dir = next((root / s for s in VAL_SPLITS if (root / s).is_dir()), None)
    if val_dir is None:
        train_part, val_part = carve(train, val_fraction, seed)
        return UniversalSplits(train_part, val_part, id2label, thing_ids, val_carved=True)
    val, *_ = read(val_dir, categories)
    return UniversalSplits(train, val, id2label, thing_ids)


def validate_universal(
    splits: UniversalSplits,
    task: str,
    *,
    check: tuple[str, ...] = ("train", "val"),
    workers: int | None = None,
) -> dict[str, np.ndarray]:
    """Read every sample of the ``check`` splits once and check it can be trained and scored
    on (evaluation alone checks ``("val",)``).

    Checks (besides those of :func:`load_universal`): splits not empty, images and PNGs
    decode, sizes agree, PNG ids are listed in ``segments_info``, class ids are known, and
    (instance) the train split has at least one non-crowd thing. Runs on a thread pool.

    Returns:
        ``{split: counts}`` for each checked split, ``(C,) int64`` non-crowd segments per class.

    Raises:
        DatasetError: the first bad sample in index order, naming its file.
    """
    counts = {}
    for split in check:
        source = getattr(splits, split)
        if len(source) == 0:
            raise DatasetError(f"the {split} split is empty; add images and annotations")
        counts[split] = _count_segments(source, len(splits.id2label), workers)
    if task == "instance" and "train" in counts:
        things = sorted(splits.thing_ids)
        if not counts["train"][things].sum():
            raise DatasetError(
                f"{splits.train.name(0)}: the train split has no (non-crowd) thing instance; "
                "instance training needs some"
            )
    return counts


def _count_segments(source: Source, num_labels: int, workers: int | None) -> np.ndarray:
    def check(index: int) -> np.ndarray | DatasetError:
        try:
            _, target = source[index]
        except DatasetError as err:
            return err
        if len(target.class_ids) and (
            target.class_ids.min() < 0 or target.class_ids.max() >= num_labels
        ):
            return DatasetError(f"{source.name(index)}: class id outside 0..{num_labels - 1}")
        return np.bincount(target.class_ids[~target.iscrowd], minlength=num_labels)

    return sum_over_samples(check, len(source), num_labels, workers)


# --------------------------------------------------------------------------- helpers


def _load(path: Path) -> Image.Image:
    try:
        return load_image(path, name=str(path))
    except ImageError as err:
        raise DatasetError(str(err)) from None


def _read_json(path: Path, keys: tuple[str, ...]) -> dict:
    if not path.is_file():
        raise DatasetError(f"{path}: not found")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"{path}: not valid JSON ({err})") from None
    missing = [k for k in keys if not isinstance(doc, dict) or not isinstance(doc.get(k), list)]
    if missing:
        raise DatasetError(
            f"{path}: needs the lists {', '.join(keys)}; missing {', '.join(missing)}"
        )
    return doc


def _categories(
    path: Path, categories: list, *, require_isthing: bool
) -> dict[int, tuple[str, bool]]:
    """``{COCO category id: (name, isthing)}``; instances JSON: every category is a thing."""
    by_id: dict[int, tuple[str, bool]] = {}
    for category in categories:
        if not isinstance(category, dict) or not isinstance(category.get("id"), int):
            raise DatasetError(f"{path}: every category needs an integer id, got {category!r:.80}")
        if category["id"] in by_id:
            raise DatasetError(f"{path}: category id {category['id']} appears twice")
        if require_isthing and "isthing" not in category:
            raise DatasetError(
                f"{path}: category {category['id']} needs isthing (1 thing, 0 stuff)"
            )
        name = str(category.get("name") or f"class_{category['id']}")
        by_id[category["id"]] = (name, bool(category.get("isthing", 1)) or not require_isthing)
    if not by_id:
        raise DatasetError(f"{path}: no categories")
    return by_id


def _category_key(categories: list) -> list:
    return sorted(
        (c.get("id"), c.get("name"), bool(c.get("isthing", 1)))
        for c in categories
        if isinstance(c, dict)
    )


def _images(path: Path, images: list, folder: Path, need_size: bool = False) -> dict:
    """``{image id: (name, file path[, (height, width)])}``; refuses duplicates and missing files."""
    found: dict[Any, tuple] = {}
    names: set[str] = set()
    for image in images:
        if not isinstance(image, dict) or "id" not in image or not image.get("file_name"):
            raise DatasetError(f"{path}: every image needs id and file_name, got {image!r:.80}")
        file_path = folder / image["file_name"]
        name = Path(image["file_name"]).with_suffix("").as_posix()
        if image["id"] in found or name in names:
            raise DatasetError(
                f"{path}: image {image['file_name']} (id {image['id']!r}) appears twice"
            )
        if not file_path.is_file():
            raise DatasetError(
                f"{file_path}: image not found (listed in {path}); add it or remove it"
            )
        names.add(name)
        if need_size:
            h, w = image.get("height"), image.get("width")
            if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
                raise DatasetError(
                    f"{path}: image {image['file_name']} needs integer width and height"
                )
            found[image["id"]] = (name, file_path, (h, w))
        else:
            found[image["id"]] = (name, file_path)
    return found


def _refuse_unlisted(folder: Path, listed: set[Path], json_path: Path, what: str = "image") -> None:
    """An image (or PNG) on disk that the JSON does not list: the user forgot to annotate it."""
    if not folder.is_dir():
        return
    suffixes = (".png",) if what == "PNG" else IMAGE_SUFFIXES
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in suffixes and not path.name.startswith(".") and path not in listed:
            raise DatasetError(
                f"{path}: {what} is not listed in {json_path}; "
                + ("annotate it or remove it" if what == "image" else "list it or remove it")
            )
