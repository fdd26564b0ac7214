"""The one result type shared by the three segmentation tasks."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum

import numpy as np


class Task(str, Enum):
    """Segmentation task. The value is the name used by the CLI, the app and the API."""

    SEMANTIC = "semantic"
    INSTANCE = "instance"
    PANOPTIC = "panoptic"

    @classmethod
    def parse(cls, value: str | Task) -> Task:
        """``"semantic"`` -> ``Task.SEMANTIC``; ValueError naming the valid tasks otherwise."""
        try:
            return cls(value)
        except ValueError:
            valid = ", ".join(t.value for t in cls)
            raise ValueError(f"unknown task {value!r}; choose one of: {valid}") from None


@dataclass(frozen=True)
class Segment:
    """One region of a :class:`SegmentationResult`.

    Attributes:
        id: value of this region in ``label_map``. Semantic: the class id.
            Instance/panoptic: the segment id, ``>= 1`` (0 = no segment).
        label: class name, from the model's ``id2label``.
        label_id: class id in ``0..num_labels-1``.
        score: model confidence in ``[0, 1]``; ``None`` for semantic regions.
        area: number of pixels, at the original image resolution.
        bbox: ``(x0, y0, x1, y1)`` pixel box, ``x1``/``y1`` exclusive.
        is_thing: panoptic only: ``True`` for countable things, ``False`` for
            stuff (fused per class); ``None`` where the notion does not apply.
    """

    id: int
    label: str
    label_id: int
    score: float | None
    area: int
    bbox: tuple[int, int, int, int]
    is_thing: bool | None = None

    def to_dict(self) -> dict:
        return asdict(self) | {"bbox": list(self.bbox)}


@dataclass
class SegmentationResult:
    """Output of :func:`segdemo.segment` for any task.

    Attributes:
        task: the task that produced it.
        label_map: ``HxW`` ``int32`` at the original image resolution.
            Semantic: class id per pixel (``0..num_labels-1``).
            Instance/panoptic: segment id per pixel, ``0`` = no segment.
        segments: regions present, sorted by ``id``.
        id2label: the model's class names, ``{class_id: name}``.
    """

    task: Task
    label_map: np.ndarray
    segments: list[Segment]
    id2label: dict[int, str] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` of the label map."""
        return self.label_map.shape[0], self.label_map.shape[1]

    def mask(self, segment_id: int) -> np.ndarray:
        """``HxW`` bool mask of the region whose ``Segment.id`` is ``segment_id``."""
        return self.label_map == segment_id

    def to_json(self) -> dict:
        """JSON-serialisable summary (no pixels): task, size and segment list."""
        height, width = self.size
        return {
            "task": self.task.value,
            "height": height,
            "width": width,
            "segments": [s.to_dict() for s in self.segments],
        }


def segments_from_label_map(label_map: np.ndarray, id2label: dict[int, str]) -> list[Segment]:
    """Semantic segments (one per class present) with areas and boxes.

    Args:
        label_map: ``HxW`` integer class ids.
        id2label: class names; a class id missing from it is named ``"class_<id>"``.

    Returns:
        Segments with ``id == label_id == class id`` and ``score=None``, sorted by id.
    """
    return [
        Segment(id=i, label=id2label.get(i, f"class_{i}"), label_id=i, score=None, area=a, bbox=b)
        for i, a, b in region_stats(label_map)
    ]


def region_stats(label_map: np.ndarray) -> list[tuple[int, int, tuple[int, int, int, int]]]:
    """``(value, area, bbox)`` for every value present in ``label_map``, in one pass per axis.

    Args:
        label_map: ``HxW`` non-negative integer array.

    Returns:
        ``[(value, pixel_count, (x0, y0, x1, y1))]`` sorted by value; boxes are exclusive.
    """
    flat = label_map.astype(np.int64, copy=False)
    height, width = flat.shape
    counts = np.bincount(flat.ravel())
    n = counts.size
    values = np.flatnonzero(counts)
    # presence tables (rows x values, cols x values) from one bincount each: O(pixels), no loop
    # over values, so a 150-class map costs the same as a 2-class one.
    row_has = np.bincount((np.arange(height)[:, None] * n + flat).ravel(), minlength=height * n)
    col_has = np.bincount((np.arange(width)[None, :] * n + flat).ravel(), minlength=width * n)
    row_has = row_has.reshape(height, n)[:, values] > 0
    col_has = col_has.reshape(width, n)[:, values] > 0
    y0 = row_has.argmax(0)
    y1 = height - row_has[::-1].argmax(0)
    x0 = col_has.argmax(0)
    x1 = width - col_has[::-1].argmax(0)
    return [
        (int(v), int(counts[v]), (int(x0[i]), int(y0[i]), int(x1[i]), int(y1[i])))
        for i, v in enumerate(values)
    ]
