"""Semantic segmentation metrics with exactly the semantics of 🤗 evaluate's ``mean_iou``.

One streaming :class:`ConfusionMatrix` is shared by training, ``python -m segdemo
evaluate`` and the tests, so the numbers agree everywhere.

Semantics (those of evaluate's ``mean_iou``, derived from its per-image
``np.histogram(x, bins=num_labels, range=(0, num_labels - 1))``; integer values
``0..num_labels-1`` land in their own bin and every other value in none):

* reference pixels equal to ``ignore_index`` are dropped, together with their
  prediction;
* ``area_intersect[c]`` counts pixels with prediction == reference == ``c``;
* ``area_label[c]`` counts reference pixels of class ``c`` whatever their
  prediction, *including* predictions outside ``0..num_labels-1``;
* ``area_pred[c]`` counts predictions of class ``c`` whatever their reference,
  *including* references outside ``0..num_labels-1`` that are not ``ignore_index``;
* totals are summed over the whole dataset, then
  ``iou = intersect / (pred + label - intersect)``, ``accuracy = intersect / label``,
  ``overall_accuracy = sum(intersect) / sum(label)``; a class absent from both
  prediction and reference gives NaN and is left out of the means (``nanmean``).

Because an out-of-range value belongs to no class, the counts are kept in an
``(N+1) x (N+1)`` matrix whose last row/column is "no class"; :attr:`ConfusionMatrix.matrix`
is its ``N x N`` class part.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping

import numpy as np
import torch

from segdemo.labels import IGNORE_INDEX, to_train_ids

__all__ = ["ConfusionMatrix", "MetricInputError", "confusion_matrix", "mean_iou"]

# Maps whose values all lie in 0..255 are counted as raw (reference, prediction)
# byte pairs: one int32 key and one bincount per pixel, with no per-pixel
# masking. Out-of-range and ignored values are folded into place later, on the
# 256 x 256 pair histogram instead of on every pixel.
_BYTE = 256


class MetricInputError(ValueError):
    """Predictions or references that cannot be scored; the message says what to fix."""


def _to_tensor(x: np.ndarray | torch.Tensor, what: str) -> torch.Tensor:
    """Integer array or tensor -> integer tensor (no copy where possible)."""
    if isinstance(x, torch.Tensor):
        t = x
    else:
        a = np.asarray(x)
        if a.dtype == np.bool_:
            a = a.view(np.uint8)
        elif a.dtype.kind == "u" and a.dtype.itemsize > 1:
            # torch has only partial support for uint16/32/64; values above 2**63 are
            # out of range anyway, and wrap to negative (still out of range).
            a = a.astype(np.int64)
        if a.dtype.kind not in "iu":
            raise MetricInputError(
                f"{what} must be integer class ids, got dtype {a.dtype}; take the argmax over classes first"
            )
        with warnings.catch_warnings():
            # read-only arrays (e.g. np.asarray(PIL image)) are fine: nothing writes to them
            warnings.simplefilter("ignore", UserWarning)
            t = torch.from_numpy(np.ascontiguousarray(a))
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    if t.is_floating_point() or t.is_complex():
        raise MetricInputError(
            f"{what} must be integer class ids, got dtype {t.dtype}; take the argmax over classes first"
        )
    return t


def _in_byte_range(t: torch.Tensor) -> bool:
    if t.dtype == torch.uint8:
        return True
    if t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t)
    return bool(lo >= 0) and bool(hi < _BYTE)


class ConfusionMatrix:
    """Streaming confusion matrix; :meth:`compute` gives evaluate's ``mean_iou`` dict.

    Args:
        num_labels: number of classes ``N``; class ids are ``0..N-1``.
        ignore_index: reference value whose pixels are not counted (default
            :data:`~segdemo.labels.IGNORE_INDEX`, 255). Predictions are never ignored.

    Update with pairs of label maps (NumPy arrays or torch tensors on any device,
    any integer dtype, same shape: ``HxW`` or ``NxHxW``). References must already
    be training ids (see :func:`segdemo.labels.to_train_ids`). Merge the matrices
    of several workers with :meth:`merge`, ``+=``, or by summing :attr:`counts`
    (e.g. an all-reduce) and :meth:`from_counts`.
    """

    def __init__(self, num_labels: int, ignore_index: int = IGNORE_INDEX) -> None:
        if int(num_labels) < 1:
            raise MetricInputError(f"num_labels must be >= 1, got {num_labels}")
        self.num_labels = int(num_labels)
        self.ignore_index = int(ignore_index)
        n = self.num_labels
        self._counts = np.zeros((n + 1, n + 1), dtype=np.int64)
        # raw byte-pair histograms (flattened 256*256, int64) per device, folded lazily
        self._pending: dict[torch.device, torch.Tensor] = {}

    # -- accumulation -------------------------------------------------------------
    def update(self, pred: np.ndarray | torch.Tensor, ref: np.ndarray | torch.Tensor) -> None:
        """Count one map or a batch of maps.

        Args:
            pred: predicted class ids, any integer dtype; values outside
                ``0..N-1`` count in no class.
            ref: reference training ids of the same shape; ``ignore_index`` pixels
                are dropped; other values outside ``0..N-1`` count in no class.
        """
        p = _to_tensor(pred, "predictions")
        r = _to_tensor(ref, "references")
        if tuple(p.shape) != tuple(r.shape):
            raise MetricInputError(
                f"prediction shape {tuple(p.shape)} differs from reference shape {tuple(r.shape)}; "
                "resize the prediction (or its logits) to the reference's resolution first"
            )
        if p.device != r.device:
            p = p.to(r.device)
        p = p.reshape(-1)
        r = r.reshape(-1)
        if p.numel() == 0:
            return
        if _in_byte_range(p) and _in_byte_range(r):
            # int32 before multiplying: uint8 arithmetic would wrap
            key = r.to(torch.int32, copy=True).mul_(_BYTE).add_(p)
            hist = torch.bincount(key, minlength=_BYTE * _BYTE)
            pending = self._pending.get(r.device)
            self._pending[r.device] = hist if pending is None else pending.add_(hist)
        else:
            self._counts += self._general_counts(p, r)

    def _general_counts(self, p: torch.Tensor, r: torch.Tensor) -> np.ndarray:
        """``(N+1)x(N+1)`` counts for maps with values beyond a byte (any integer range)."""
        n = self.num_labels
        p = p.long()
        r = r.long()
        none = torch.tensor(n, device=r.device)
        col = torch.where((p < 0) | (p >= n), none, p)
        row = torch.where((r < 0) | (r >= n), none, r)
        row = torch.where(r == self.ignore_index, none + 1, row)  # row N+1: dropped
        key = row * (n + 1) + col
        hist = torch.bincount(key, minlength=(n + 2) * (n + 1))[: (n + 1) * (n + 1)]
        return hist.cpu().numpy().reshape(n + 1, n + 1)

    def _fold(self, raw: np.ndarray) -> np.ndarray:
        """256x256 (reference value, prediction value) histogram -> ``(N+1)x(N+1)`` counts."""
        n = self.num_labels
        values = np.arange(_BYTE)
        cols = np.minimum(values, n)  # every value >= N is "no class"
        rows = cols.copy()
        if 0 <= self.ignore_index < _BYTE:
            rows[self.ignore_index] = n + 1  # dropped
        by_row = np.zeros((n + 2, _BYTE), dtype=np.int64)
        np.add.at(by_row, rows, raw.reshape(_BYTE, _BYTE))
        out = np.zeros((n + 2, n + 1), dtype=np.int64)
        np.add.at(out.T, cols, by_row.T)
        return out[: n + 1]

    def _flush(self) -> None:
        for raw in self._pending.values():
            self._counts += self._fold(raw.cpu().numpy())
        self._pending.clear()

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add ``other``'s counts to this matrix (in place) and return it."""
        if (other.num_labels, other.ignore_index) != (self.num_labels, self.ignore_index):
            raise MetricInputError(
                f"cannot merge a ConfusionMatrix of {other.num_labels} labels / ignore {other.ignore_index} "
                f"into one of {self.num_labels} labels / ignore {self.ignore_index}; use the same settings"
            )
        self._counts += other.counts
        return self

    def __iadd__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        return self.merge(other)

    def reset(self) -> None:
        """Forget all counts."""
        self._counts[:] = 0
        self._pending.clear()

    # -- results ------------------------------------------------------------------
    @property
    def counts(self) -> np.ndarray:
        """``(N+1)x(N+1)`` ``int64``: rows = reference, cols = prediction; index ``N`` = no class.

        Row ``N`` holds non-ignored references outside ``0..N-1``; column ``N``
        holds predictions outside ``0..N-1``. A copy: sum these across workers.
        """
        self._flush()
        return self._counts.copy()

    @property
    def matrix(self) -> np.ndarray:
        """``NxN`` ``int64`` confusion matrix: rows = reference class, cols = predicted class."""
        n = self.num_labels
        return self.counts[:n, :n]

    @classmethod
    def from_counts(
        cls, counts: np.ndarray | torch.Tensor, ignore_index: int = IGNORE_INDEX
    ) -> ConfusionMatrix:
        """Rebuild from :attr:`counts` (e.g. after summing them across processes)."""
        c = (
            counts.detach().cpu().numpy()
            if isinstance(counts, torch.Tensor)
            else np.asarray(counts)
        )
        if c.ndim != 2 or c.shape[0] != c.shape[1] or c.shape[0] < 2:
            raise MetricInputError(
                f"counts must be an (N+1)x(N+1) array as given by ConfusionMatrix.counts, got shape {c.shape}"
            )
        cm = cls(c.shape[0] - 1, ignore_index)
        cm._counts += c.astype(np.int64)
        return cm

    def areas(self) -> dict[str, np.ndarray]:
        """Per-class totals as evaluate computes them: ``intersect``, ``union``, ``pred``, ``label``.

        Each is a length-``N`` ``int64`` array.
        """
        n = self.num_labels
        c = self.counts
        intersect = np.diagonal(c)[:n].copy()
        label = c[:n, :].sum(axis=1)  # includes out-of-range predictions
        pred = c[:, :n].sum(axis=0)  # includes out-of-range, non-ignored references
        return {
            "intersect": intersect,
            "union": pred + label - intersect,
            "pred": pred,
            "label": label,
        }

    def compute(self) -> dict:
        """Evaluate's ``mean_iou`` result.

        Returns:
            ``mean_iou``, ``mean_accuracy``, ``overall_accuracy`` (``float``, NaN
            when nothing was counted) and ``per_category_iou``,
            ``per_category_accuracy`` (length-``N`` ``float64`` arrays; NaN for a
            class with a zero denominator).
        """
        a = {k: v.astype(np.float64) for k, v in self.areas().items()}
        with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter(
                "ignore", RuntimeWarning
            )  # nanmean of all-NaN -> NaN, as evaluate
            iou = a["intersect"] / a["union"]
            acc = a["intersect"] / a["label"]
            return {
                "mean_iou": float(np.nanmean(iou)),
                "mean_accuracy": float(np.nanmean(acc)),
                "overall_accuracy": float(a["intersect"].sum() / a["label"].sum()),
                "per_category_iou": iou,
                "per_category_accuracy": acc,
            }


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
