"""Instance/panoptic post-processing thresholds, defined once.

    >>> DEFAULT_THRESHOLDS
    Thresholds(threshold=0.9, mask_threshold=0.5, overlap_mask_area_threshold=0.5)
    >>> Thresholds.from_mapping({"threshold": 0.5})  # a model's recommendation, any subset
    Thresholds(threshold=0.5, mask_threshold=0.5, overlap_mask_area_threshold=0.5)

The defaults are those of the transformers ``image-segmentation`` pipeline. A model folder
may recommend others in its ``segdemo.json`` (``{"thresholds": {...}}``, see
:mod:`segdemo.registry`); the app's sliders and ``python -m segdemo predict`` start from
them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

from segdemo.errors import SegdemoError


class ThresholdError(SegdemoError):
    """A threshold outside 0..1, or a name that is no threshold."""


@dataclass(frozen=True)
class Thresholds:
    """Thresholds of instance and panoptic post-processing, each in ``[0, 1]``.

    Attributes:
        threshold: minimum class probability of a query (segment score).
        mask_threshold: probability at which a mask pixel is on.
        overlap_mask_area_threshold: panoptic (and OneFormer instance): drop a segment
            when less than this fraction of its mask survives the overlap resolution.
    """

    threshold: float = 0.9
    mask_threshold: float = 0.5
    overlap_mask_area_threshold: float = 0.5

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ThresholdError(f"{item.name} must be a number between 0 and 1, got {value!r}")
            if not 0.0 <= float(value) <= 1.0:
                raise ThresholdError(f"{item.name} must be between 0 and 1, got {value}")

    @classmethod
    def from_mapping(cls, values: Mapping, base: Thresholds | None = None) -> Thresholds:
        """``base`` (default :data:`DEFAULT_THRESHOLDS`) with the entries of ``values`` replaced.

        Raises:
            ThresholdError: a key that is no threshold, or a value outside 0..1.
        """
        if not isinstance(values, Mapping):
            raise ThresholdError(
                f"thresholds must be an object like {{'threshold': 0.5}}, got {values!r}"
            )
        names = {item.name for item in fields(cls)}
        unknown = sorted(str(key) for key in values if key not in names)
        if unknown:
            raise ThresholdError(
                f"unknown threshold {', '.join(unknown)}; use {', '.join(sorted(names))}"
            )
        return replace(base or DEFAULT_THRESHOLDS, **dict(values))

    def as_kwargs(self) -> dict[str, float]:
        """``{name: value}``: the keyword arguments of :func:`segdemo.segment.segment`."""
        return {item.name: float(getattr(self, item.name)) for item in fields(self)}


DEFAULT_THRESHOLDS = Thresholds()
"""The transformers pipeline's defaults: 0.9 / 0.5 / 0.5."""
