"""The test-time augmentation modes of :func:`segdemo.segment.segment` (semantic only), without
importing torch, so command-line parsers can list them.

* ``None``: one forward pass, the pipeline's result bit for bit (the default everywhere);
* ``"flip"``: the class scores of the image and its mirror image, mirrored back, averaged
  (2 passes);
* ``"multiscale"``: the softmax probabilities of both at every input scale of
  :data:`TTA_SCALES`, resized to the one-pass score size, averaged (6 passes).
"""

from __future__ import annotations

TTA_MODES = (None, "flip", "multiscale")

TTA_CHOICES = tuple(mode for mode in TTA_MODES if mode is not None)
"""The modes a ``--tta`` flag accepts."""

TTA_SCALES = (1.0, 1.25, 1.5)
"""Input scales of ``"multiscale"``, times the processor's resize target. On CamVid drive
0001TP, the embedded model's recipe trained without that drive (row J of docs/training.md)
scores mIoU 0.486 in one pass, 0.493 with flip and 0.508 with these scales and flip."""
