"""Metric conveniences only the tests use, on top of :class:`segdemo.metrics.ConfusionMatrix`.

``mean_iou`` is a drop-in for 🤗 evaluate's ``mean_iou.compute``: the tests compare it with
an independent implementation of evaluate's algorithm and with ``python -m segdemo evaluate``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch

from segdemo.labels import IGNORE_INDEX, to_train_ids
from segdemo.metrics import ConfusionMatrix, MetricInputError


def confusion_matrix(
    pred: np.ndarray | torch.Tensor,
    ref: np.ndarray | torch.Tensor,
    num_labels: int,
    ignore_index: int = IGNORE_INDEX,
) -> np.ndarray:
    """``NxN`` ``int64`` confusion matrix of one pair (rows = reference, cols = prediction).

    Out-of-range values and ``ignore_index`` references are left out; use
    :class:`ConfusionMatrix` for metrics, which keeps the out-of-range counts.
    """
    cm = ConfusionMatrix(num_labels, ignore_index)
    cm.update(pred, ref)
    return cm.matrix


def mean_iou(
    predictions: Iterable[np.ndarray | torch.Tensor],
    references: Iterable[np.ndarray | torch.Tensor],
    num_labels: int,
    ignore_index: int = IGNORE_INDEX,
    nan_to_num: float | None = None,
    label_map: Mapping[int, int] | None = None,
    reduce_labels: bool = False,
) -> dict:
    """Drop-in for evaluate's ``mean_iou.compute`` on lists of ``HxW`` maps.

    Args:
        predictions: predicted class ids per image.
        references: *raw* reference maps per image (sizes may differ between
            images, not within a pair).
        num_labels: number of classes.
        ignore_index: reference value (after ``label_map``/``reduce_labels``) to drop.
        nan_to_num: if given, NaN values in the result are replaced by it.
        label_map: ``{old: new}`` applied to references first (all keys look at the
            original values).
        reduce_labels: ADE20K convention, references only: 0 -> 255, ``v`` -> ``v - 1``.

    Returns:
        The dict of :meth:`ConfusionMatrix.compute`.
    """
    cm = ConfusionMatrix(num_labels, ignore_index)
    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references):
        raise MetricInputError(
            f"got {len(predictions)} predictions but {len(references)} references; pass one per image"
        )
    for pred, ref in zip(predictions, references, strict=True):
        if label_map or reduce_labels:
            ref = np.asarray(ref.cpu() if isinstance(ref, torch.Tensor) else ref)
            if label_map:
                mapped = ref.astype(np.int64, copy=True)
                for old, new in label_map.items():
                    mapped[ref == old] = new
                ref = mapped
            if reduce_labels:
                ref = to_train_ids(ref, reduce_labels=True)
        cm.update(pred, ref)
    metrics = cm.compute()
    if nan_to_num is not None:
        metrics = {k: np.nan_to_num(v, nan=nan_to_num) for k, v in metrics.items()}
        metrics = {k: float(v) if np.ndim(v) == 0 else v for k, v in metrics.items()}
    return metrics
