"""Dataset readers and validation shared by ``train/run.py`` and ``python -m segdemo evaluate``.

Two kinds of input become one :class:`Source` (a sized sequence of image/annotation pairs):

* a folder (what ``../shared/datasets/camvid`` uses)::

      DIR/id2label.json                      {"0": "sky", "1": "building", ...}
      DIR/{train,val}/images/NAME.jpg|png    photos (any mode; read with segdemo.images)
      DIR/{train,val}/annotations/NAME.png   class-index PNGs (mode L, P or I;16)

  pairs are matched by file stem; a missing ``val`` split is carved from ``train``;
* a 🤗 ``datasets`` hub id or ``save_to_disk`` folder with an ``image`` (or
  ``pixel_values``) column and an ``annotation`` (or ``label``) column.

Annotations are read as integer arrays of *raw* values and turned into train ids by
:func:`segdemo.labels.to_train_ids` only (``reduce_labels``, ``ignore_index``): class ids
``0..num_labels-1`` plus :data:`~segdemo.labels.IGNORE_INDEX` (255) for void.

:func:`validate` checks every pair before training starts and raises :class:`DatasetError`
naming the file. Augmentation and the torch ``Dataset`` live in :mod:`segdemo.transforms`.

    >>> splits = load_folder("camvid")          # Splits(train, val, id2label)
    >>> image, raw = splits.val[0]              # RGB PIL image, HxW int64 raw values
    >>> validate(splits.train, len(splits.id2label), ignore_index=11)
"""

from __future__ import annotations

import json
import math
import os
import random
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from segdemo.images import ImageError, load_image
from segdemo.labels import IGNORE_INDEX, to_train_ids

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
ANNOTATION_SUFFIXES = (".png", ".tif", ".tiff", ".bmp")
IMAGE_COLUMNS = ("image", "pixel_values")
LABEL_COLUMNS = ("annotation", "label")
VAL_SPLITS = ("val", "validation")


class DatasetError(ValueError):
    """A dataset that cannot be trained on. ``str(err)`` names the file and what to do."""


# --------------------------------------------------------------------------- readers


@dataclass(frozen=True)
class Pair:
    """One photo and its annotation on disk, matched by ``name`` (the shared file stem)."""

    name: str
    image: Path
    annotation: Path


def read_id2label(root: str | os.PathLike) -> dict[int, str]:
    """Read ``root/id2label.json`` (or ``root`` itself when it is a file).

    Returns:
        ``{class_id: name}`` with ids ``0..N-1`` (contiguous, as transformers configs need).

    Raises:
        DatasetError: missing file, bad JSON, non-integer keys, or ids not ``0..N-1``.
    """
    path = Path(root)
    if path.is_dir():
        path = path / "id2label.json"
    if not path.is_file():
        raise DatasetError(f'{path}: not found; write the class names as {{"0": "name", ...}}')
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f'{path}: not valid JSON ({err}); write {{"0": "name", ...}}') from None
    if not isinstance(raw, dict) or not raw:
        raise DatasetError(f'{path}: expected a non-empty object {{"0": "name", ...}}')
    try:
        id2label = {int(key): str(value) for key, value in raw.items()}
    except (TypeError, ValueError):
        raise DatasetError(f'{path}: keys must be integer class ids like "0", "1", ...') from None
    if sorted(id2label) != list(range(len(id2label))):
        raise DatasetError(
            f"{path}: class ids must be 0..{len(id2label) - 1} without gaps, got {sorted(id2label)}"
        )
    if any(not isinstance(value, str) or not value for value in raw.values()):
        raise DatasetError(f"{path}: every class needs a non-empty string name")
    return id2label


def find_pairs(root: str | os.PathLike, split: str) -> list[Pair]:
    """List ``root/split/images/*`` with their ``root/split/annotations/*``, sorted by name.

    Returns:
        The pairs, or ``[]`` when ``root/split`` does not exist (a missing val split is allowed).

    Raises:
        DatasetError: an image without annotation or the reverse, two files with one stem,
            or a split folder without ``images/``/``annotations/``.
    """
    split_dir = Path(root) / split
    if not split_dir.exists():
        return []
    images = _files_by_stem(split_dir / "images", IMAGE_SUFFIXES)
    annotations = _files_by_stem(split_dir / "annotations", ANNOTATION_SUFFIXES)
    for stem, path in images.items():
        if stem not in annotations:
            raise DatasetError(
                f"{path}: image has no annotation (expected {split_dir / 'annotations' / stem}.png); add it or remove the image"
            )
    for stem, path in annotations.items():
        if stem not in images:
            raise DatasetError(
                f"{path}: annotation has no image in {split_dir / 'images'}; add it or remove the annotation"
            )
    return [Pair(stem, images[stem], annotations[stem]) for stem in sorted(images)]


def find_val_pairs(root: str | os.PathLike) -> list[Pair]:
    """The pairs of the first of :data:`VAL_SPLITS` under ``root`` that has any, or ``[]``.

    Raises:
        DatasetError: as :func:`find_pairs`.
    """
    return next((pairs for split in VAL_SPLITS if (pairs := find_pairs(root, split))), [])


def _files_by_stem(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    if not folder.is_dir():
        raise DatasetError(
            f"{folder}: folder not found; expected {folder.parent}/images and {folder.parent}/annotations"
        )
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in suffixes:
            continue
        if path.stem in found:
            raise DatasetError(f"{path}: two files named {path.stem!r} in {folder}; keep one")
        found[path.stem] = path
    return found


def read_annotation(source: str | os.PathLike | Image.Image, name: str | None = None) -> np.ndarray:
    """Read a class-index annotation without any colour conversion.

    Args:
        source: a path or an opened ``PIL.Image`` in mode ``L``, ``P`` (palette indices are
            the values), ``I;16``, ``I`` or ``1``; ``RGB`` only when its three channels are equal.
        name: how to call it in errors (default: the file name).

    Returns:
        ``HxW`` ``int64`` array of *raw* values (apply :func:`~segdemo.labels.to_train_ids`).

    Raises:
        DatasetError: unreadable file, or a colour-coded annotation.
    """
    label = name or (Path(source).name if not isinstance(source, Image.Image) else "annotation")
    try:
        image = Image.open(source) if not isinstance(source, Image.Image) else source
        image.load()
    except (OSError, SyntaxError, ValueError) as err:
        raise DatasetError(
            f"{label}: cannot read the annotation ({err}); re-export it as a PNG"
        ) from None
    if image.mode in ("L", "P", "I", "1") or image.mode.startswith("I;16"):
        return np.asarray(image).astype(np.int64)
    if image.mode in ("RGB", "RGBA"):
        rgb = np.asarray(image)[..., :3]
        if (rgb == rgb[..., :1]).all():  # grey saved as RGB: the value is the class id
            return rgb[..., 0].astype(np.int64)
    raise DatasetError(
        f"{label}: annotation is colour-coded (mode {image.mode}); save class ids as a one-channel PNG (mode L or P)"
    )


class Source(Sequence):
    """A sized sequence of samples: ``source[i] -> (RGB PIL image, annotation)``.

    Semantic sources (this module) give ``HxW int64`` raw labels; instance/panoptic ones
    (:class:`segdemo.coco.UniversalSource`) give a :class:`segdemo.coco.Target`.
    :class:`Subset`, :class:`Concat`, :func:`carve` and the group splits work on both.
    """

    def name(self, index: int) -> str:
        """The file (or row) to name in messages about sample ``index``."""
        raise NotImplementedError

    def key(self, index: int) -> str:
        """Sample ``index``'s id, unique within the source (default: :meth:`name`); its
        group (:func:`group_of`) is read from it."""
        return self.name(index)

    def keys(self) -> list[str]:
        """:meth:`key` of every sample, in order."""
        return [self.key(i) for i in range(len(self))]


class FolderSource(Source):
    """Pairs on disk (see :func:`find_pairs`)."""

    def __init__(self, pairs: Sequence[Pair]):
        self.pairs = list(pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def name(self, index: int) -> str:
        return str(self.pairs[index].image)

    def __getitem__(self, index: int) -> tuple[Image.Image, np.ndarray]:
        pair = self.pairs[index]
        try:
            image = load_image(pair.image, name=str(pair.image))
        except ImageError as err:
            raise DatasetError(str(err)) from None
        return image, read_annotation(pair.annotation, name=str(pair.annotation))


class HFSource(Source):
    """Rows of a 🤗 ``datasets.Dataset`` with an image column and a label column."""

    def __init__(self, table: Any, title: str):
        columns = list(table.column_names)
        self.image_column = next((c for c in IMAGE_COLUMNS if c in columns), None)
        self.label_column = next((c for c in LABEL_COLUMNS if c in columns), None)
        if self.image_column is None or self.label_column is None:
            raise DatasetError(
                f"{title}: needs an image column ({'/'.join(IMAGE_COLUMNS)}) and a label column "
                f"({'/'.join(LABEL_COLUMNS)}), found {columns}; rename them with dataset.rename_column"
            )
        self.table = table
        self.title = title

    def __len__(self) -> int:
        return len(self.table)

    def name(self, index: int) -> str:
        return f"{self.title}[{index}]"

    def __getitem__(self, index: int) -> tuple[Image.Image, np.ndarray]:
        row = self.table[int(index)]
        name = self.name(index)
        try:
            image = load_image(_as_pil(row[self.image_column]), name=name)
        except ImageError as err:
            raise DatasetError(str(err)) from None
        return image, read_annotation(
            _as_pil(row[self.label_column]), name=f"{name}.{self.label_column}"
        )


def _as_pil(value: Any) -> Image.Image:
    if isinstance(value, Image.Image):
        return value
    return Image.fromarray(np.asarray(value))


class Subset(Source):
    """``source`` restricted to ``indices`` (a carved or held-out split)."""

    def __init__(self, source: Source, indices: Sequence[int]):
        self.source = source
        self.indices = [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def name(self, index: int) -> str:
        return self.source.name(self.indices[index])

    def key(self, index: int) -> str:
        return self.source.key(self.indices[index])

    def __getitem__(self, index: int) -> tuple[Image.Image, Any]:
        return self.source[self.indices[index]]


@dataclass
class Splits:
    """What a training run reads: train and val sources and the class names."""

    train: Source
    val: Source
    id2label: dict[int, str]
    val_carved: bool = False


def carve(source: Source, fraction: float, seed: int) -> tuple[Source, Source]:
    """Split ``source`` into (train, val) with a seeded shuffle; val gets ``ceil(fraction*n)``, at least 1."""
    if not 0 < fraction < 1:
        raise DatasetError(f"val fraction must be between 0 and 1, got {fraction}")
    if len(source) < 2:
        raise DatasetError(
            f"{source.name(0) if len(source) else 'train'}: need at least 2 samples to carve a val split"
        )
    order = list(range(len(source)))
    random.Random(seed).shuffle(order)
    n_val = min(len(source) - 1, max(1, math.ceil(fraction * len(source))))
    return Subset(source, sorted(order[n_val:])), Subset(source, sorted(order[:n_val]))


GROUP_PATTERN = r"^([^_]+)_"
"""Default rule for an image's *group* (``--val-groups``): its file name up to the first
``_`` (CamVid: the drive, ``0001TP_006690.png`` -> ``0001TP``); a name without a match is
its own group. Frames of one drive look alike, so a held-out group measures how a model
does on footage it never saw; a random split of frames does not."""


class Concat(Source):
    """Several sources as one (their samples in order); keys must stay unique."""

    def __init__(self, *sources: Source):
        self.parts = [(source, i) for source in sources for i in range(len(source))]

    def __len__(self) -> int:
        return len(self.parts)

    def name(self, index: int) -> str:
        source, i = self.parts[index]
        return source.name(i)

    def key(self, index: int) -> str:
        source, i = self.parts[index]
        return source.key(i)

    def __getitem__(self, index: int) -> tuple[Image.Image, Any]:
        source, i = self.parts[index]
        return source[i]


def group_of(name: str, pattern: str = GROUP_PATTERN) -> str:
    """The group of a sample named ``name`` (a path or a file name): ``pattern``'s first
    capture group matched against the file stem, else the whole stem."""
    stem = Path(name).stem
    match = re.match(pattern, stem)
    return match.group(1) if match and match.groups() else stem


def group_list(text: str | None) -> list[str]:
    """The groups of a ``--val-groups`` value: a comma list (``"0001TP,0006R0"``), empty
    items dropped; ``None`` gives ``[]``."""
    return [g for g in (text or "").split(",") if g]


def select_groups(
    names: Sequence[str], groups: Sequence[str], *, pattern: str = GROUP_PATTERN
) -> list[int]:
    """Indices of the samples named ``names`` whose group (:func:`group_of`) is in
    ``groups`` (non-empty), in order.

    Raises:
        DatasetError: a group that no sample has (the message lists the groups there are).
    """
    of = [group_of(name, pattern) for name in names]
    known = sorted(set(of))
    unknown = [g for g in groups if g not in known]
    if unknown:
        raise DatasetError(
            f"--val-groups {','.join(unknown)}: no image has that group (groups by "
            f"{pattern!r}: {', '.join(known[:20])}); pick from those"
        )
    return [i for i, g in enumerate(of) if g in set(groups)]


def split_by_groups(
    names: Sequence[str], val_groups: Sequence[str], *, pattern: str = GROUP_PATTERN
) -> tuple[list[int], list[int]]:
    """``(train indices, val indices)`` of pooled samples named ``names``: val = every sample
    whose group (:func:`group_of`) is in ``val_groups`` (non-empty), train = all others.

    Raises:
        DatasetError: a group that no sample has (the message lists the groups there are),
            or groups that would leave train empty.
    """
    val = select_groups(names, val_groups, pattern=pattern)
    held = set(val)
    train = [i for i in range(len(names)) if i not in held]
    if not train:
        raise DatasetError(
            f"--val-groups {','.join(val_groups)} holds out every image; keep one group to train on"
        )
    return train, val


SplitsT = TypeVar("SplitsT")


def hold_out_groups(
    splits: SplitsT, val_groups: Sequence[str], *, pattern: str = GROUP_PATTERN
) -> SplitsT:
    """Train and val pooled, then split by group (:func:`split_by_groups`): what
    ``--val-groups`` / ``--train-on-val`` train on. ``val_groups`` empty: everything trains
    and the original val split is kept for monitoring (its scores are then on training
    data). ``splits``: a :class:`Splits` or :class:`segdemo.coco.UniversalSplits`."""
    pooled = Concat(splits.train, splits.val)
    if not val_groups:
        return replace(splits, train=pooled, val_carved=False)
    train, val = split_by_groups(pooled.keys(), val_groups, pattern=pattern)
    return replace(splits, train=Subset(pooled, train), val=Subset(pooled, val), val_carved=True)


def groups_as_val(
    splits: SplitsT, groups: Sequence[str], *, pattern: str = GROUP_PATTERN
) -> SplitsT:
    """For scoring: val = the samples of ``groups`` from train and val pooled (the drive a
    ``--val-groups`` run held out); train is left as it is."""
    pooled = Concat(splits.train, splits.val)
    held = Subset(pooled, select_groups(pooled.keys(), groups, pattern=pattern))
    return replace(splits, val=held, val_carved=False)


def load_folder(root: str | os.PathLike, *, val_fraction: float = 0.1, seed: int = 0) -> Splits:
    """Read the folder layout described in the module docstring.

    Raises:
        DatasetError: no such folder, malformed ``id2label.json``, unmatched files, empty train split.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(
            f"{root}: data folder not found; pass --data-dir DIR with DIR/train/images and DIR/train/annotations"
        )
    id2label = read_id2label(root)
    train_pairs = find_pairs(root, "train")
    if not train_pairs:
        raise DatasetError(
            f"{root / 'train'}: no image/annotation pairs; expected train/images/NAME.jpg + train/annotations/NAME.png"
        )
    val_pairs = find_val_pairs(root)
    train = FolderSource(train_pairs)
    if val_pairs:
        return Splits(train, FolderSource(val_pairs), id2label)
    train, val = carve(train, val_fraction, seed)
    return Splits(train, val, id2label, val_carved=True)


def open_hf_splits(name_or_path: str) -> tuple[Any, Any]:
    """``(train, val or None)`` 🤗 ``datasets.Dataset`` tables of a hub id or ``save_to_disk``
    folder: its ``train`` split and its ``validation``/``val`` split if any (a single
    table is train). The one place segdemo opens a 🤗 dataset.

    Raises:
        DatasetError: ``datasets`` not installed, the dataset not loadable, no ``train`` split.
    """
    try:
        import datasets
    except ImportError:
        raise DatasetError(
            "--dataset needs the optional package `datasets`: pip install datasets"
        ) from None
    local = Path(name_or_path)
    try:
        table = (
            datasets.load_from_disk(str(local))
            if local.exists()
            else datasets.load_dataset(name_or_path)
        )
    except Exception as err:  # datasets raises many types (FileNotFoundError, ConnectionError, ...)
        first = str(err).splitlines()[0] if str(err) else ""
        raise DatasetError(
            f"{name_or_path}: cannot load the dataset ({type(err).__name__}: {first}); "
            "check the id and network, or pass a save_to_disk folder"
        ) from None
    if not isinstance(table, datasets.DatasetDict):
        return table, None
    if "train" not in table:
        raise DatasetError(
            f"{name_or_path}: no 'train' split (found {list(table)}); name the training split 'train'"
        )
    val_name = next((s for s in VAL_SPLITS if s in table), None)
    return table["train"], (table[val_name] if val_name else None)


def load_hf(
    name_or_path: str,
    *,
    id2label: str | os.PathLike | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> Splits:
    """Read a 🤗 datasets hub id or ``save_to_disk`` folder (``train`` + optional ``validation``/``val``).

    Class names come from ``id2label`` (a JSON path), else ``FOLDER/id2label.json`` for a
    folder, else the hub dataset repo's ``id2label.json`` (as in the transformers guide).

    Raises:
        DatasetError: ``datasets`` not installed, dataset not loadable, columns missing, no names.
    """
    train_table, val_table = open_hf_splits(name_or_path)
    local = Path(name_or_path)
    train = HFSource(train_table, f"{name_or_path}[train]")
    val = HFSource(val_table, f"{name_or_path}[val]") if val_table is not None else None
    names = read_id2label(id2label) if id2label else _hf_id2label(name_or_path, local)
    if len(train) == 0:
        raise DatasetError(f"{train.title}: the train split is empty")
    if val is None or len(val) == 0:
        train_part, val_part = carve(train, val_fraction, seed)
        return Splits(train_part, val_part, names, val_carved=True)
    return Splits(train, val, names)


def _hf_id2label(name_or_path: str, local: Path) -> dict[int, str]:
    if local.exists():
        return read_id2label(local)
    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(name_or_path, "id2label.json", repo_type="dataset")
    except Exception as err:  # offline, missing file, private repo
        raise DatasetError(
            f"{name_or_path}: no id2label.json in the dataset repo ({type(err).__name__}); pass --id2label FILE"
        ) from None
    return read_id2label(path)


# --------------------------------------------------------------------------- validation


def check_label_range(labels: np.ndarray, raw: np.ndarray, num_labels: int, name: str) -> None:
    """Refuse an annotation whose training ids are neither class ids nor ignored.

    Args:
        labels: ``HxW`` training ids from :func:`~segdemo.labels.to_train_ids`.
        raw: the annotation's raw values (named in the message).
        num_labels: class ids are ``0..num_labels-1``.
        name: the file (or sample) the message names.

    Raises:
        DatasetError: naming the file, the first bad raw value and the flags that fix it.
    """
    bad = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= num_labels))
    if bad.any():
        value = int(raw[bad][0])
        raise DatasetError(
            f"{name}: label value {value} is not a class id 0..{num_labels - 1} nor ignored; "
            "fix id2label.json or pass --ignore-index / --reduce-labels"
        )


def validate(
    source: Source,
    num_labels: int,
    *,
    reduce_labels: bool = False,
    ignore_index: int | None = IGNORE_INDEX,
    split: str = "train",
    workers: int | None = None,
) -> np.ndarray:
    """Read every pair once and check it can be trained on.

    Checks: the split is not empty, image and annotation decode, their sizes match, and
    every train id (after :func:`~segdemo.labels.to_train_ids`) is ``< num_labels`` or
    :data:`~segdemo.labels.IGNORE_INDEX`. Decoding runs on a thread pool (Pillow releases
    the GIL): CamVid's 468 pairs take about a second.

    Returns:
        ``int64`` array ``(num_labels,)``: pixel count per class (useful to spot absent classes).

    Raises:
        DatasetError: the first bad sample in index order, naming its file.
    """
    if len(source) == 0:
        raise DatasetError(f"the {split} split is empty; add image/annotation pairs")

    def check(index: int) -> np.ndarray | DatasetError:
        try:
            image, raw = source[index]
        except DatasetError as err:
            return err
        name = source.name(index)
        if raw.shape != (image.height, image.width):
            return DatasetError(
                f"{name}: image is {image.width}x{image.height} but its annotation is {raw.shape[1]}x{raw.shape[0]}; "
                "annotations must have the image's size"
            )
        labels = to_train_ids(raw, reduce_labels=reduce_labels, ignore_index=ignore_index)
        try:
            check_label_range(labels, raw, num_labels, name)
        except DatasetError as err:
            return err
        return np.bincount(labels[labels != IGNORE_INDEX].ravel(), minlength=num_labels)

    return sum_over_samples(check, len(source), num_labels, workers)


def sum_over_samples(
    check: Callable[[int], np.ndarray | DatasetError],
    count: int,
    num_labels: int,
    workers: int | None = None,
) -> np.ndarray:
    """Run ``check(i)`` for every sample on a thread pool (decoding releases the GIL) and
    sum its ``(num_labels,) int64`` results; the first :class:`DatasetError` it returns, in
    index order, is raised."""
    total = np.zeros(num_labels, np.int64)
    with ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1)) as pool:
        for result in pool.map(check, range(count)):
            if isinstance(result, DatasetError):
                raise result
            total += result
    return total
