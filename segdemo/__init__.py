"""segdemo: semantic, instance and panoptic segmentation on 🤗 transformers.

Public API (everything else is reached by module path):

* :func:`load_image` -- any user image to RGB, or a one-line :class:`ImageError`.
* :class:`Task`, :class:`Segment`, :class:`SegmentationResult` -- the result type.
"""

from segdemo.images import ImageError, load_image
from segdemo.labels import IGNORE_INDEX
from segdemo.result import Segment, SegmentationResult, Task

__all__ = ["IGNORE_INDEX", "ImageError", "Segment", "SegmentationResult", "Task", "load_image"]
