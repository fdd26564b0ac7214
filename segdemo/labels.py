"""Label conventions, defined once for training, evaluation, the app and the tests.

Label maps everywhere in segdemo are ``HxW`` integer arrays of *class ids* in
``0..num_labels-1``; the value :data:`IGNORE_INDEX` (255) marks pixels that no
loss or metric may count (void, boundaries, padding).

Raw annotation files may use other conventions; they are converted at the edge,
in exactly one place, by :func:`to_train_ids`:

* ``reduce_labels=True`` (ADE20K style): raw 0 is "background/other" and becomes
  :data:`IGNORE_INDEX`; raw ``v`` in ``1..255`` becomes class ``v - 1``. This is
  what ``reduce_labels``/``do_reduce_labels`` means in transformers and in
  🤗 evaluate's ``mean_iou`` (applied to references only, never predictions).
* ``ignore_index=k`` (e.g. CamVid's void 11): raw ``k`` becomes
  :data:`IGNORE_INDEX`; every other value is kept.
"""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255
"""Class id of pixels that are ignored by the loss and by metrics."""


def to_train_ids(
    raw: np.ndarray, *, reduce_labels: bool = False, ignore_index: int | None = None
) -> np.ndarray:
    """Convert a raw annotation to training ids.

    Args:
        raw: ``HxW`` integer array of raw label values (any integer dtype).
        reduce_labels: ADE20K convention: 0 -> ignore, ``v`` -> ``v - 1``.
            Applied before ``ignore_index``.
        ignore_index: raw value (after reduction) that means void; mapped to
            :data:`IGNORE_INDEX`. ``None`` or 255 leaves values as they are.

    Returns:
        ``HxW`` ``int64`` array: class ids, or :data:`IGNORE_INDEX`.
    """
    labels = np.asarray(raw).astype(np.int64, copy=True)
    if reduce_labels:
        background = labels == 0
        labels -= 1
        labels[background] = IGNORE_INDEX
        # raw 255 (already "ignore" in many datasets) must stay ignore, not become 254
        labels[np.asarray(raw) == 255] = IGNORE_INDEX
    if ignore_index is not None and ignore_index != IGNORE_INDEX:
        labels[labels == ignore_index] = IGNORE_INDEX
    return labels
